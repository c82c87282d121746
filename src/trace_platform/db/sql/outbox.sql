-- Transactional outbox: rows written with a state change, delivered by the drainer.

-- name: insert_outbox
INSERT INTO state.outbox (outbox_id, topic, payload)
VALUES ($1, $2, $3)
ON CONFLICT (outbox_id) DO NOTHING
RETURNING outbox_id;

-- name: outbox_exists
SELECT 1 FROM state.outbox WHERE outbox_id = $1;

-- name: claim_pending
SELECT outbox_id, topic, payload, attempts
FROM state.outbox
WHERE status = 'pending' AND available_at <= now()
ORDER BY available_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: mark_sent
UPDATE state.outbox SET status = 'sent', attempts = attempts + 1, last_error = NULL, updated_at = now()
WHERE outbox_id = ANY($1::uuid[]);

-- name: mark_failed
-- Back off and retry; give up ('dead') after $3 attempts.
UPDATE state.outbox
SET attempts = attempts + 1, last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'dead' ELSE 'pending' END,
    available_at = now() + make_interval(secs => least(60, power(2, attempts)::float8)),
    updated_at = now()
WHERE outbox_id = ANY($1::uuid[]);

-- name: purge_sent
DELETE FROM state.outbox
WHERE outbox_id IN (
    SELECT outbox_id FROM state.outbox
    WHERE status = 'sent' AND updated_at < now() - make_interval(secs => $1)
    LIMIT $2
);

-- name: backlog
SELECT status, count(*) AS n,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds
FROM state.outbox GROUP BY status ORDER BY status;

-- name: notify_outbox
SELECT pg_notify('trace_outbox', '');
