-- Alert definitions (SPEC §12): evaluated on every newly committed range of their dataset.
CREATE TABLE state.alert_definitions (
    alert_id     uuid PRIMARY KEY,          -- uuid5(org, name)
    org_id       uuid NOT NULL,
    name         text NOT NULL,
    dataset_uuid uuid NOT NULL REFERENCES state.datasets (dataset_uuid),
    spec         jsonb NOT NULL,            -- the validated spec (rule, identity, channels ...)
    start_block  bigint NOT NULL,           -- ranges ending after it are evaluated
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);
CREATE INDEX alert_definitions_dataset_idx ON state.alert_definitions (dataset_uuid) WHERE enabled;
