-- Query runs (SPEC §21): a user's query executed by the query service in the background,
-- its result written under results/{org}/{run_id}/ in the object store. A run holds the
-- sha256 of its SQL, never the text (invariant 24). The query service that runs it beats
-- `heartbeat_at`; a run whose beat stops (its service died) is failed by the collector, so no
-- run stays `running` for ever. Results expire at `expires_at` (TRACE_QUERY_RESULT_TTL) and
-- the collector deletes them (`collected_at`).
CREATE TABLE state.query_runs (
    run_id          uuid PRIMARY KEY,
    org_id          uuid NOT NULL,
    user_id         uuid NULL,                     -- NULL: an operator at this installation
    idempotency_key text NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    sql_sha256      text NOT NULL CHECK (sql_sha256 ~ '^[0-9a-f]{64}$'),
    format          text NOT NULL CHECK (format IN ('json', 'arrow', 'csv', 'parquet')),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    rows            bigint NULL,
    bytes           bigint NULL,
    truncated       boolean NULL,
    duration_ms     bigint NULL,
    error_code      text NULL,
    error_detail    text NULL,                     -- the caller's one-line reason, never SQL
    output_uri      text NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz NULL,
    finished_at     timestamptz NULL,
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    collected_at    timestamptz NULL
);

-- Idempotent submission: one run per (org, user, key).
CREATE UNIQUE INDEX query_runs_idempotency_idx
    ON state.query_runs (org_id, coalesce(user_id, '00000000-0000-0000-0000-000000000000'::uuid),
                         idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A user's recent runs, newest first (GET /v1/query-runs, the console's history).
CREATE INDEX query_runs_user_created_idx
    ON state.query_runs (org_id, user_id, created_at DESC, run_id DESC);
-- The collector: live runs (a stopped beat) and results past their expiry.
CREATE INDEX query_runs_live_idx ON state.query_runs (heartbeat_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX query_runs_expiry_idx ON state.query_runs (expires_at)
    WHERE output_uri IS NOT NULL AND collected_at IS NULL;
