-- pgqueue: the Lite Queue port on state.queue_messages.

-- name: publish
-- Message ids are the caller's (outbox ids where there is one): a re-published row adds nothing.
WITH inserted AS (
    INSERT INTO state.queue_messages (message_id, queue_name, payload, available_at)
    SELECT m.id, $1, m.payload, now() + make_interval(secs => $4)
    FROM unnest($2::uuid[], $3::jsonb[]) AS m(id, payload)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) AS n, pg_notify('trace_queue', $1) FROM inserted;

-- name: receive
WITH picked AS (
    SELECT message_id
    FROM state.queue_messages
    WHERE queue_name = $1
      AND greatest(available_at, coalesce(invisible_until, available_at)) <= now()
    ORDER BY greatest(available_at, coalesce(invisible_until, available_at))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE state.queue_messages m
SET invisible_until = now() + make_interval(secs => $3), deliveries = m.deliveries + 1
FROM picked
WHERE m.message_id = picked.message_id
RETURNING m.message_id, m.payload, m.deliveries, m.created_at;

-- name: ack
-- Fenced by delivery count, like a receipt handle: a stale receiver cannot delete a redelivery.
DELETE FROM state.queue_messages m
USING unnest($2::uuid[], $3::int[]) AS r(message_id, deliveries)
WHERE m.queue_name = $1 AND m.message_id = r.message_id AND m.deliveries = r.deliveries
RETURNING m.message_id;

-- name: extend_visibility
UPDATE state.queue_messages m
SET invisible_until = now() + make_interval(secs => $4)
FROM unnest($2::uuid[], $3::int[]) AS r(message_id, deliveries)
WHERE m.queue_name = $1 AND m.message_id = r.message_id AND m.deliveries = r.deliveries
RETURNING m.message_id;

-- name: dead_letter
-- Move one delivery to the DLQ with its error and the original message, atomically.
WITH moved AS (
    DELETE FROM state.queue_messages
    WHERE queue_name = $1 AND message_id = $2 AND deliveries = $3
    RETURNING payload, deliveries
)
INSERT INTO state.queue_messages (message_id, queue_name, payload)
SELECT gen_random_uuid(), $4,
       jsonb_build_object('original', payload, 'error', $5::text, 'source_queue', $1,
                          'deliveries', deliveries, 'failed_at', now())
FROM moved
RETURNING message_id;

-- name: list_messages
-- $3: only the messages of this org (a DLQ message keeps its original pointer's org_id).
SELECT message_id, payload, deliveries, created_at, available_at, invisible_until
FROM state.queue_messages
WHERE queue_name = $1 AND ($3::text IS NULL OR payload->'original'->>'org_id' = $3)
ORDER BY created_at, message_id
LIMIT $2;

-- name: redrive
WITH moved AS (
    DELETE FROM state.queue_messages
    WHERE queue_name = $1 AND ($2::uuid[] IS NULL OR message_id = ANY($2::uuid[]))
      AND ($4::text IS NULL OR payload->'original'->>'org_id' = $4)
    RETURNING payload
)
INSERT INTO state.queue_messages (message_id, queue_name, payload)
SELECT gen_random_uuid(), coalesce(payload->>'source_queue', $3), payload->'original'
FROM moved
RETURNING message_id;

-- name: purge
-- $3: only the messages of this org, as list_messages.
DELETE FROM state.queue_messages
WHERE queue_name = $1 AND message_id = ANY($2::uuid[])
  AND ($3::text IS NULL OR payload->'original'->>'org_id' = $3)
RETURNING message_id;

-- name: stats
SELECT queue_name,
       count(*) AS depth,
       count(*) FILTER (WHERE greatest(available_at, coalesce(invisible_until, available_at)) <= now())
           AS visible,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM state.queue_messages
GROUP BY queue_name
ORDER BY queue_name;
