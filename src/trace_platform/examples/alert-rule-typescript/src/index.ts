// Example alert rule in TypeScript (SPEC §12): evaluated on every newly committed range of
// the alert's source dataset, in the sandboxed runner. It gets {alert, range, config}, reads
// the range through the query service (the only data its token grants) and returns the rows
// that are events; Trace keys them by the alert's identity columns and the block's hash.

interface AlertEvent {
  alert: { name: string; severity: string };
  range: { dataset_id: string; dataset: string; start: number; end: number };
  config: { min_tokens?: number };
}

interface QueryResult {
  columns: { name: string; type: string }[];
  rows: unknown[][];
}

interface Context {
  query(datasetId: string, sql: string, limit?: number): Promise<QueryResult>;
}

const ZERO = "0x" + "0".repeat(40); // mints are not transfers between holders

export async function handler(event: AlertEvent, context: Context) {
  const minTokens = event.config.min_tokens ?? 1_000_000;
  const res = await context.query(
    event.range.dataset_id,
    "SELECT block_number, transaction_hash, log_index, from_address, to_address, value_f64 FROM dataset",
    10_000,
  );
  const names = res.columns.map((c) => c.name);
  const rows = res.rows.map((r) => Object.fromEntries(names.map((n, i) => [n, r[i]])));
  return rows
    .filter((r) => (r.value_f64 as number) / 1e18 >= minTokens && r.from_address !== ZERO)
    .map((r) => ({ ...r, tokens: Math.round((r.value_f64 as number) / 1e18) }));
}
