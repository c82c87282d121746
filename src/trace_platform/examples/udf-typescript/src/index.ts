// Example TypeScript UDF: flag transfers above a threshold (compiled by esbuild at build time).
// event: {threshold_wei, dataset: "<granted dataset uuid>"} or {threshold_wei, transfers: [...]}

interface Transfer {
  tx_hash: string;
  block_number: number;
  value_wei: string | number;
  chain_id?: number;
  ts?: string;
  time?: string;
}

interface Event {
  threshold_wei: number;
  dataset?: string;
  transfers?: Transfer[];
}

interface QueryResult {
  columns: { name: string; type: string }[];
  rows: unknown[][];
  truncated: boolean;
}

interface Context {
  task_id: string;
  attempt: number;
  FatalError: new (message: string) => Error;
  log: { info(message: string): void };
  query(datasetId: string, sql: string, limit?: number): Promise<QueryResult>;
}

const RULE = "3c2b7f0e-5d1a-5b8e-9f6c-2a4d8e1f0b7a";

async function transfersAbove(event: Event, context: Context, threshold: number): Promise<Transfer[]> {
  if (!event.dataset) {
    return (event.transfers ?? []).filter((t) => BigInt(t.value_wei) > BigInt(threshold));
  }
  const result = await context.query(
    event.dataset,
    `SELECT tx_hash, block_number, value_wei, ts FROM dataset WHERE value_wei > ${threshold} ORDER BY block_number`,
    10000,
  );
  const names = result.columns.map((c) => c.name);
  return result.rows.map((row) => Object.fromEntries(names.map((n, i) => [n, row[i]])) as Transfer);
}

export async function handler(event: Event, context: Context) {
  if (!Number.isSafeInteger(event.threshold_wei) || event.threshold_wei < 0) {
    throw new context.FatalError("threshold_wei must be a non-negative integer");
  }
  const alerts = (await transfersAbove(event, context, event.threshold_wei)).map((t) => ({
    alert_definition_id: RULE,
    dedupe_key: `large-transfer-ts:${t.tx_hash}`,
    event_time: t.ts ?? t.time ?? "2024-01-01T00:00:00Z",
    chain_id: t.chain_id ?? 1,
    block_number: t.block_number,
    tx_hash: t.tx_hash,
    payload: { value_wei: String(t.value_wei), rule: "large-transfer", language: "typescript" },
  }));
  context.log.info(`${alerts.length} large transfers`);
  return alerts;
}
