-- A saved query's query runs (SPEC §21, issue 30): a run started from a saved query records
-- the saved query's name and the sha256 of its bound parameter values beside the sha256 of
-- its SQL — never the values' text (a value may be a secret). An idempotency key names one
-- (SQL, parameter values, format); the same key with other values is a 409. NULL for a run
-- of plain SQL.
ALTER TABLE state.query_runs
    ADD COLUMN saved_query   text NULL CHECK (length(saved_query) BETWEEN 1 AND 128),
    ADD COLUMN params_sha256 text NULL CHECK (params_sha256 ~ '^[0-9a-f]{64}$');

-- A saved query's runs, newest first (GET /v1/query-runs?saved_query=NAME, the console).
CREATE INDEX query_runs_saved_query_idx
    ON state.query_runs (org_id, user_id, saved_query, created_at DESC, run_id DESC)
    WHERE saved_query IS NOT NULL;
