-- Query runs (SPEC §21, migration state/0012): the query service inserts, starts, beats,
-- finishes and collects them; the user API reads them and cancels (a compare-and-swap on the
-- status: the run's own finish only lands on a run still `running`). No statement here ever
-- carries SQL text: a run is known by the sha256 of its SQL.

-- name: insert_run
-- A new run, queued; nothing when the (org, user, idempotency key) already names one.
INSERT INTO state.query_runs
    (run_id, org_id, user_id, idempotency_key, sql_sha256, format, expires_at, saved_query,
     params_sha256)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8, $9)
ON CONFLICT DO NOTHING
RETURNING run_id;

-- name: run_by_key
SELECT run_id, sql_sha256, format, status, saved_query, params_sha256
FROM state.query_runs
WHERE org_id = $1 AND user_id IS NOT DISTINCT FROM $2 AND idempotency_key = $3;

-- name: start_run
UPDATE state.query_runs
SET status = 'running', started_at = now(), heartbeat_at = now()
WHERE run_id = $1 AND status = 'queued'
RETURNING run_id;

-- name: finish_run
-- Succeeded, with its result's place and sizes; only a run still running (a cancel wins).
UPDATE state.query_runs
SET status = 'succeeded', rows = $2, bytes = $3, truncated = $4, duration_ms = $5,
    output_uri = $6, finished_at = now()
WHERE run_id = $1 AND status = 'running'
RETURNING run_id;

-- name: fail_run
UPDATE state.query_runs
SET status = 'failed', error_code = $2, error_detail = $3, duration_ms = $4, finished_at = now()
WHERE run_id = $1 AND status IN ('queued', 'running')
RETURNING run_id;

-- name: beat_runs
-- The runs a query service holds are alive; those it gets back are still wanted (a run
-- canceled meanwhile is not returned: its service stops it).
UPDATE state.query_runs
SET heartbeat_at = now()
WHERE run_id = ANY($1::uuid[]) AND status IN ('queued', 'running')
RETURNING run_id;

-- name: fail_lost_runs
-- Runs whose query service stopped beating (killed, host lost): failed with a reason, never
-- left `running`.
UPDATE state.query_runs
SET status = 'failed', error_code = 'query_service_lost',
    error_detail = 'the query service running this query stopped; submit it again',
    finished_at = now()
WHERE status IN ('queued', 'running') AND heartbeat_at < now() - make_interval(secs => $1)
RETURNING run_id, org_id;

-- name: expired_results
SELECT run_id, org_id, output_uri
FROM state.query_runs
WHERE output_uri IS NOT NULL AND collected_at IS NULL AND expires_at <= now()
ORDER BY expires_at
LIMIT $1;

-- name: mark_collected
UPDATE state.query_runs SET collected_at = now() WHERE run_id = $1;

-- name: run_of_org
SELECT run_id, org_id, user_id, sql_sha256, format, status, rows, bytes, truncated,
       duration_ms, error_code, error_detail, output_uri, created_at, started_at,
       finished_at, expires_at, collected_at, saved_query, params_sha256
FROM state.query_runs
WHERE org_id = $1 AND run_id = $2;

-- name: runs_of_user
-- A user's runs, newest first, keyset-paged by (created_at, run_id); $6: only the runs of
-- that saved query (NULL: all).
SELECT run_id, org_id, user_id, sql_sha256, format, status, rows, bytes, truncated,
       duration_ms, error_code, error_detail, output_uri, created_at, started_at,
       finished_at, expires_at, collected_at, saved_query, params_sha256
FROM state.query_runs
WHERE org_id = $1 AND user_id = $2
  AND ($3::timestamptz IS NULL OR (created_at, run_id) < ($3, $4::uuid))
  AND ($6::text IS NULL OR saved_query = $6)
ORDER BY created_at DESC, run_id DESC
LIMIT $5;

-- name: cancel_run
UPDATE state.query_runs
SET status = 'canceled', error_code = 'canceled', error_detail = 'canceled on request',
    finished_at = now()
WHERE org_id = $1 AND run_id = $2 AND status IN ('queued', 'running')
RETURNING run_id;
