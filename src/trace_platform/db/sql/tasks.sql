-- Task lifecycle statements. Every transition is a compare-and-swap on what was read.

-- name: insert_tasks
WITH created AS (
    INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts)
    SELECT t.task_id, $3::uuid, 'queued', t.payload, $4
    FROM unnest($1::uuid[], $2::jsonb[]) AS t(task_id, payload)
    RETURNING task_id, payload
)
INSERT INTO state.outbox (outbox_id, topic, payload)
SELECT state.wakeup_outbox_id(task_id, 1), state.wakeup_topic(payload),
       jsonb_build_object('task_id', task_id)
FROM created;

-- name: claim_task
UPDATE state.tasks
SET status = 'running', lease_token = $2, lease_expires_at = now() + make_interval(secs => $3),
    worker_id = $4, updated_at = now()
WHERE task_id = $1 AND status = 'queued'
RETURNING task_id, org_id, attempt, lease_token, lease_expires_at, payload;

-- name: claim_tasks
UPDATE state.tasks
SET status = 'running', lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $2), worker_id = $3, updated_at = now()
WHERE task_id = ANY($1::uuid[]) AND status = 'queued'
RETURNING task_id, org_id, attempt, lease_token, lease_expires_at, payload;

-- name: task_statuses
SELECT task_id, status FROM state.tasks WHERE task_id = ANY($1::uuid[]);

-- name: task_state
SELECT task_id, status, attempt, lease_token, last_outcome, max_attempts, org_id
FROM state.tasks WHERE task_id = $1;

-- name: lock_task_state
-- hook_keys: which of the success hooks' payload keys ($2) this task's payload has.
SELECT task_id, status, attempt, lease_token, last_outcome, max_attempts, org_id,
       ARRAY(SELECT k FROM unnest($2::text[]) AS k WHERE payload ? k) AS hook_keys
FROM state.tasks WHERE task_id = $1 FOR UPDATE;

-- name: share_task_state
SELECT task_id, status, attempt, lease_token, last_outcome, max_attempts, org_id
FROM state.tasks WHERE task_id = $1 FOR SHARE;

-- name: task_view
SELECT task_id, org_id, status, attempt, max_attempts, lease_expires_at, worker_id, payload,
       next_retry_at, last_outcome, last_error, outputs, created_at, updated_at
FROM state.tasks WHERE task_id = $1;

-- name: heartbeat
UPDATE state.tasks
SET lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
WHERE task_id = $1 AND attempt = $2 AND lease_token = $3 AND status = 'running'
RETURNING lease_expires_at;

-- name: finish_attempt
-- $7: seconds until the retry, NULL when no retry follows.
UPDATE state.tasks
SET status = $4, last_outcome = $5, last_error = $6,
    next_retry_at = CASE WHEN $7::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $7) END,
    outputs = coalesce($8::jsonb, outputs), lease_expires_at = NULL, updated_at = now()
WHERE task_id = $1 AND attempt = $2 AND lease_token = $3
RETURNING status, next_retry_at;

-- name: complete_running_success
-- Fast path of the commonest report: a running attempt succeeds. Same rule as
-- domain.lifecycle.decide_completion for a running row; anything else takes the full path.
UPDATE state.tasks
SET status = 'completed', last_outcome = 'success', last_error = NULL, next_retry_at = NULL,
    outputs = coalesce($4::jsonb, outputs), lease_expires_at = NULL, updated_at = now()
WHERE task_id = $1 AND attempt = $2 AND lease_token = $3 AND status = 'running'
  -- $5: the payload keys of the success hooks (a chain range commits with its completion):
  -- a task a hook owns takes the full path.
  AND NOT payload ?| $5::text[]
RETURNING status;

-- name: complete_running_successes
-- The same fast path for a batch of reports (trusted workers batch their completions).
UPDATE state.tasks t
SET status = 'completed', last_outcome = 'success', last_error = NULL, next_retry_at = NULL,
    outputs = coalesce(c.outputs, t.outputs), lease_expires_at = NULL, updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::jsonb[])
     AS c(task_id, attempt, lease_token, outputs)
WHERE t.task_id = c.task_id AND t.attempt = c.attempt AND t.lease_token = c.lease_token
  AND t.status = 'running' AND NOT t.payload ?| $5::text[]
RETURNING t.task_id;

-- name: insert_events
INSERT INTO state.task_events (event_key, task_id, attempt, event)
SELECT e.key, $1, $2, e.event FROM unnest($3::text[], $4::jsonb[]) AS e(key, event)
ON CONFLICT (event_key) DO NOTHING;

-- name: cancel_tasks
-- The kernel's cancel (an operator's `task cancel`, a chain reorg replacing ranges): queued,
-- running or failed tasks end as canceled. A wake-up still queued is then refused at claim;
-- a running attempt's heartbeat and completion are refused (409), so the worker stops it.
-- $2: the reason kept as last_error (NULL keeps the last one).
UPDATE state.tasks
SET status = 'canceled', next_retry_at = NULL, lease_expires_at = NULL,
    last_error = coalesce($2::text, last_error), updated_at = now()
WHERE task_id = ANY($1::uuid[]) AND status IN ('queued', 'running', 'failed')
RETURNING task_id, attempt;

-- name: expired_leases
SELECT task_id, attempt, lease_token, max_attempts
FROM state.tasks
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1;

-- name: reap_leases
-- CAS per row: a heartbeat or completion that raced the read wins.
UPDATE state.tasks t
SET status = 'failed', last_outcome = 'timeout', last_error = 'lease expired before the attempt reported',
    next_retry_at = CASE WHEN c.delay IS NULL THEN NULL ELSE now() + make_interval(secs => c.delay) END,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::float8[]) AS c(task_id, attempt, lease_token, delay)
WHERE t.task_id = c.task_id AND t.attempt = c.attempt AND t.lease_token = c.lease_token
  AND t.status = 'running' AND t.lease_expires_at < now()
RETURNING t.task_id, t.attempt, t.next_retry_at;

-- name: due_retries
SELECT task_id, attempt, lease_token
FROM state.tasks
WHERE status = 'failed' AND next_retry_at <= now()
ORDER BY next_retry_at
LIMIT $1;

-- name: start_retries
-- CAS per row, and the wake-up in the same statement: a retry never creates a new task row.
WITH started AS (
    UPDATE state.tasks t
    SET status = 'queued', attempt = t.attempt + 1, lease_token = NULL, lease_expires_at = NULL,
        worker_id = NULL, next_retry_at = NULL, last_outcome = NULL, updated_at = now()
    FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS c(task_id, attempt, lease_token)
    WHERE t.task_id = c.task_id AND t.attempt = c.attempt
      AND t.lease_token IS NOT DISTINCT FROM c.lease_token
      AND t.status = 'failed' AND t.next_retry_at <= now()
    RETURNING t.task_id, t.attempt, t.payload
)
INSERT INTO state.outbox (outbox_id, topic, payload)
SELECT state.wakeup_outbox_id(task_id, attempt), state.wakeup_topic(payload),
       jsonb_build_object('task_id', task_id)
FROM started
ON CONFLICT (outbox_id) DO NOTHING
RETURNING (payload->>'task_id')::uuid AS task_id;

-- name: status_counts
SELECT status, count(*) AS n FROM state.tasks GROUP BY status ORDER BY status;
