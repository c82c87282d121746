-- UDF bundle registry (state DB).

-- name: insert_bundle
-- Bundles are immutable: the same content registers once, a different one never overwrites.
INSERT INTO state.udf_bundles (bundle_id, org_id, sha256, language, entrypoint, size_bytes, storage_uri)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (bundle_id) DO NOTHING
RETURNING bundle_id;

-- name: get_bundle
SELECT bundle_id, org_id, sha256, language, entrypoint, size_bytes, storage_uri, created_at
FROM state.udf_bundles WHERE bundle_id = $1;
