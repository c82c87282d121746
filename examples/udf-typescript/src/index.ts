// Example TypeScript UDF: flag transfers above a threshold (compiled by esbuild at build time).

interface Transfer {
  tx_hash: string;
  block_number: number;
  value_wei: string | number;
  chain_id?: number;
  time?: string;
}

interface Event {
  threshold_wei: number;
  transfers: Transfer[];
}

interface Context {
  task_id: string;
  attempt: number;
  FatalError: new (message: string) => Error;
  log: { info(message: string): void };
}

const RULE = "3c2b7f0e-5d1a-5b8e-9f6c-2a4d8e1f0b7a";

export async function handler(event: Event, context: Context) {
  if (typeof event.threshold_wei !== "number" || event.threshold_wei < 0) {
    throw new context.FatalError("threshold_wei must be a non-negative number");
  }
  const threshold = BigInt(event.threshold_wei);
  const alerts = (event.transfers ?? [])
    .filter((t) => BigInt(t.value_wei) > threshold)
    .map((t) => ({
      alert_definition_id: RULE,
      dedupe_key: `large-transfer-ts:${t.tx_hash}`,
      event_time: t.time ?? "2024-01-01T00:00:00Z",
      chain_id: t.chain_id ?? 1,
      block_number: t.block_number,
      tx_hash: t.tx_hash,
      payload: { value_wei: String(t.value_wei), rule: "large-transfer", language: "typescript" },
    }));
  context.log.info(`${alerts.length} alerts`);
  return alerts;
}
