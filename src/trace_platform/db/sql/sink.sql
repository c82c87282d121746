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
    payload             text NOT NULL
) ON COMMIT DELETE ROWS;

-- name: upsert_from_staging
-- Idempotent on (org_id, dedupe_key); org_id and producer come from the trusted queue message.
INSERT INTO data.alert_events (dedupe_key, org_id, alert_definition_id, event_time, chain_id,
                               block_number, block_hash, tx_hash, payload, producer_task_id)
SELECT dedupe_key, $1, alert_definition_id, event_time, chain_id, block_number, block_hash,
       tx_hash, payload::jsonb, $2
FROM alert_staging
ON CONFLICT (org_id, dedupe_key) DO NOTHING;

-- name: clear_staging
TRUNCATE alert_staging;
