-- Sink statements (data DB).

-- name: create_staging
CREATE TEMP TABLE IF NOT EXISTS alert_staging (
    dedupe_key          text NOT NULL,
    alert_definition_id uuid NOT NULL,
    event_time          timestamptz NOT NULL,
    chain_id            bigint,
    block_number        bigint,
    block_hash          text,
    tx_hash             text,
    payload             text NOT NULL,
    channels            smallint[]
) ON COMMIT DELETE ROWS;

-- name: upsert_from_staging
-- Idempotent on (org_id, dedupe_key); org_id and producer come from the trusted queue message.
-- The hot path: events without channels.
INSERT INTO data.alert_events (dedupe_key, org_id, alert_definition_id, event_time, chain_id,
                               block_number, block_hash, tx_hash, payload, producer_task_id)
SELECT dedupe_key, $1, alert_definition_id, event_time, chain_id, block_number, block_hash,
       tx_hash, payload::jsonb, $2
FROM alert_staging
ON CONFLICT (org_id, dedupe_key) DO NOTHING;

-- name: upsert_with_deliveries
-- The same, for events with channels: an event that is new gets its delivery rows (one per channel) in the same statement, so a
-- duplicate or a re-evaluation never delivers twice. Returns the events inserted.
WITH inserted AS (
    INSERT INTO data.alert_events (dedupe_key, org_id, alert_definition_id, event_time, chain_id,
                                   block_number, block_hash, tx_hash, payload, producer_task_id)
    SELECT dedupe_key, $1, alert_definition_id, event_time, chain_id, block_number, block_hash,
           tx_hash, payload::jsonb, $2
    FROM alert_staging
    ON CONFLICT (org_id, dedupe_key) DO NOTHING
    RETURNING dedupe_key, alert_definition_id
), deliveries AS (
    INSERT INTO data.alert_deliveries (delivery_id, org_id, dedupe_key, alert_definition_id,
                                       channel, max_attempts)
    SELECT DISTINCT md5($1::text || ':' || i.dedupe_key || ':' || c.channel)::uuid, $1::uuid,
           i.dedupe_key, i.alert_definition_id, c.channel, $3::int
    FROM inserted i
    JOIN alert_staging s ON s.dedupe_key = i.dedupe_key AND s.channels IS NOT NULL
    CROSS JOIN LATERAL unnest(s.channels) AS c(channel)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
-- `trace deliver` listens on trace_delivery: a new delivery is posted at once, not at its
-- next poll (the notification leaves with the commit).
SELECT (SELECT count(*) FROM inserted),
       (SELECT pg_notify('trace_delivery', '') WHERE EXISTS (SELECT 1 FROM deliveries));

-- name: clear_staging
TRUNCATE alert_staging;
