-- Immutable UDF bundles: content-addressed zips in the object store.
CREATE TABLE state.udf_bundles (
    bundle_id   uuid PRIMARY KEY,           -- uuid5(org, sha256, language, entrypoint)
    org_id      uuid NOT NULL,
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    language    text NOT NULL CHECK (language IN ('python', 'node')),
    entrypoint  text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes > 0),
    storage_uri text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX udf_bundles_org_idx ON state.udf_bundles (org_id, created_at);
