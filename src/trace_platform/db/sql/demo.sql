-- `trace demo`: how far its own workload got (its tasks by id, its rows by key prefix).

-- name: task_counts
SELECT status, count(*) AS n FROM state.tasks WHERE task_id = ANY($1) GROUP BY status;

-- name: records_published
SELECT coalesce(sum((outputs->>'records')::bigint), 0) FROM state.tasks
WHERE task_id = ANY($1) AND status = 'completed';

-- name: dead_letters
SELECT count(*) FROM state.queue_messages WHERE queue_name = $1;

-- name: events_with_prefix
-- (data DB) the demo's events: their dedupe keys start with the run's prefix ($1 a LIKE pattern).
SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1;

-- name: task_outcome
SELECT status, next_retry_at, last_error FROM state.tasks WHERE task_id = $1;

-- name: active_jobs_on_pool
-- The chain jobs that read the demo's node (they name its pool) and are not paused yet.
SELECT name FROM state.chain_jobs WHERE org_id = $1 AND rpc_pool = $2 AND NOT paused
ORDER BY name;

-- name: ranges_in_flight_on_pool
SELECT count(*) FROM state.chain_ranges r JOIN state.chain_jobs j USING (job_id)
WHERE j.org_id = $1 AND j.rpc_pool = $2 AND r.status = 'scheduled';

-- name: dag_tasks
-- Tasks ever created for a DAG's jobs, every generation's (each range or run has one).
SELECT count(*) FROM state.dag_ranges r
JOIN state.dag_jobs j ON j.job_uuid = r.job_uuid
JOIN state.dags d ON d.dag_id = j.dag_id
WHERE d.org_id = $1 AND d.name = $2;
