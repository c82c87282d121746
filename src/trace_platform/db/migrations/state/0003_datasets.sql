-- Dataset registry: version-addressed Parquet files with a manifest.
CREATE TABLE state.datasets (
    dataset_uuid uuid PRIMARY KEY,         -- uuid5(org, name)
    org_id       uuid NOT NULL,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

CREATE TABLE state.dataset_versions (
    dataset_uuid    uuid NOT NULL REFERENCES state.datasets (dataset_uuid),
    dataset_version text NOT NULL,         -- content hash of the manifest
    storage_prefix  text NOT NULL,         -- <root>/datasets/{uuid}/{version}/
    manifest        jsonb NOT NULL,        -- {"files": [{name, uri, size, sha256}]}
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_uuid, dataset_version)
);
