-- Webhook deliveries (data DB). A claim moves next_attempt_at past the lease: a delivery
-- process that dies mid-request leaves the row to be claimed again when that time comes.

-- name: claim_due
WITH due AS (
    SELECT delivery_id FROM data.alert_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE data.alert_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $2),
    updated_at = now()
FROM due, data.alert_events e
WHERE d.delivery_id = due.delivery_id AND e.org_id = d.org_id AND e.dedupe_key = d.dedupe_key
RETURNING d.delivery_id, d.org_id, d.alert_definition_id, d.channel, d.attempts, d.max_attempts,
          d.dedupe_key, e.event_time, e.chain_id, e.block_number, e.block_hash, e.tx_hash,
          e.payload, d.created_at;

-- name: record_results
-- One round trip for a batch of attempts. A result counts when it is the current attempt's
-- (a process whose lease ran out reports too late), except that a success always counts.
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::text[],
                         $6::float8[], $7::timestamptz[], $8::int[])
        AS r(delivery_id, attempt, outcome, status_code, error, retry_in, started_at, duration_ms)
), updated AS (
    UPDATE data.alert_deliveries d
    SET status = CASE r.outcome WHEN 'delivered' THEN 'delivered'
                                WHEN 'failed' THEN 'failed' ELSE 'pending' END,
        last_status_code = r.status_code,
        last_error = r.error,
        next_attempt_at = CASE WHEN r.outcome = 'retry'
                               THEN now() + make_interval(secs => r.retry_in)
                               ELSE d.next_attempt_at END,
        delivered_at = CASE WHEN r.outcome = 'delivered' THEN now() END,
        updated_at = now()
    FROM r
    WHERE d.delivery_id = r.delivery_id AND d.status = 'pending'
      AND (d.attempts = r.attempt OR r.outcome = 'delivered')
    RETURNING d.delivery_id
)
INSERT INTO data.delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                                    outcome, error)
SELECT delivery_id, attempt, started_at, duration_ms, status_code, outcome, error FROM r
ON CONFLICT (delivery_id, attempt) DO NOTHING;

-- name: next_due_in
-- Seconds until the earliest pending delivery comes due (negative: due now; NULL: none).
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM data.alert_deliveries WHERE status = 'pending';

-- name: retry_delivery
-- `trace delivery retry ID`: a failed (or pending) delivery is due now, with a fresh budget
-- (`trace deliver` is told: it listens on trace_delivery).
WITH retried AS (
    UPDATE data.alert_deliveries
    SET status = 'pending', next_attempt_at = now(), max_attempts = attempts + $3,
        last_error = NULL, updated_at = now()
    WHERE delivery_id = $1 AND org_id = $2 AND status IN ('failed', 'pending')
    RETURNING delivery_id, status, attempts, max_attempts
)
SELECT delivery_id, status, attempts, max_attempts
FROM retried, LATERAL (SELECT pg_notify('trace_delivery', '')) AS told;

-- name: delivery_by_id
SELECT d.*, e.block_number, e.tx_hash FROM data.alert_deliveries d
LEFT JOIN data.alert_events e ON e.org_id = d.org_id AND e.dedupe_key = d.dedupe_key
WHERE d.delivery_id = $1 AND d.org_id = $2;

-- name: deliveries_of_alert
SELECT d.delivery_id, d.channel, d.status, d.attempts, d.max_attempts, d.last_status_code,
       d.last_error, d.next_attempt_at, d.created_at, d.delivered_at, d.dedupe_key,
       e.block_number, e.tx_hash
FROM data.alert_deliveries d
LEFT JOIN data.alert_events e ON e.org_id = d.org_id AND e.dedupe_key = d.dedupe_key
WHERE d.org_id = $1 AND d.alert_definition_id = $2
  AND ($3::text IS NULL OR d.status = $3)
ORDER BY d.created_at DESC, d.delivery_id
LIMIT $4;

-- name: attempts_of_delivery
SELECT attempt, started_at, duration_ms, status_code, outcome, error
FROM data.delivery_attempts WHERE delivery_id = $1 ORDER BY attempt;

-- name: delivery_counts
SELECT status, count(*) AS n FROM data.alert_deliveries
WHERE org_id = $1 AND alert_definition_id = $2 GROUP BY status;
