-- Datasets written by the sink and the query audit trail.
CREATE SCHEMA IF NOT EXISTS data;

CREATE TABLE data.alert_events (
    dedupe_key          text PRIMARY KEY CHECK (dedupe_key <> ''),
    org_id              uuid NOT NULL,
    alert_definition_id uuid NOT NULL,
    event_time          timestamptz NOT NULL,
    chain_id            bigint NULL,
    block_number        bigint NULL,
    block_hash          text NULL,
    tx_hash             text NULL,
    payload             jsonb NOT NULL DEFAULT '{}',
    producer_task_id    uuid NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_events_org_time_idx ON data.alert_events (org_id, event_time);
CREATE INDEX alert_events_producer_idx ON data.alert_events (producer_task_id);

CREATE TABLE data.query_audit (
    id               bigserial PRIMARY KEY,
    org_id           uuid NOT NULL,
    task_id          uuid NOT NULL,
    dataset_id       uuid NULL,
    query_time       timestamptz NOT NULL DEFAULT now(),
    columns_accessed jsonb NULL,
    result_row_count bigint NOT NULL DEFAULT 0,
    sql_sha256       text NULL      -- a hash only: the SQL text is never stored
);
CREATE INDEX query_audit_task_idx ON data.query_audit (task_id);
