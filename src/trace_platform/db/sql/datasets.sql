-- Dataset registry (state DB).

-- name: upsert_dataset
INSERT INTO state.datasets (dataset_uuid, org_id, name) VALUES ($1, $2, $3)
ON CONFLICT (dataset_uuid) DO NOTHING;

-- name: insert_version
INSERT INTO state.dataset_versions (dataset_uuid, dataset_version, storage_prefix, manifest)
VALUES ($1, $2, $3, $4)
ON CONFLICT (dataset_uuid, dataset_version) DO NOTHING
RETURNING dataset_version;

-- name: resolve_latest
-- A name (or uuid) of this org → its newest version.
SELECT d.dataset_uuid, d.name, v.dataset_version, v.storage_prefix
FROM state.datasets d
JOIN state.dataset_versions v USING (dataset_uuid)
WHERE d.org_id = $1 AND (d.name = $2 OR d.dataset_uuid::text = $2)
ORDER BY v.created_at DESC
LIMIT 1;

-- name: org_relations
-- Every dataset of an org that can be read (a version or a committed snapshot), by name:
-- the catalog a person's query resolves its relation names against. `derived`: a DAG job's
-- output (partitioned like a chain's relations, but not a chain job's for short names).
SELECT d.name, d.kind, d.dataset_uuid,
       EXISTS (SELECT 1 FROM state.dag_jobs j WHERE j.dataset_uuid = d.dataset_uuid) AS derived
FROM state.datasets d
WHERE d.org_id = $1
  AND (d.kind = 'partitions'
       OR EXISTS (SELECT 1 FROM state.dataset_versions v WHERE v.dataset_uuid = d.dataset_uuid))
  -- A DAG job's generation that is not current (building, retired) is not in the catalog.
  AND NOT EXISTS (SELECT 1 FROM state.dag_jobs j
                  WHERE j.dataset_uuid = d.dataset_uuid AND j.role <> 'current')
ORDER BY d.name;

-- name: resolve_pinned
SELECT d.dataset_uuid, d.name, v.dataset_version, v.storage_prefix
FROM state.datasets d
JOIN state.dataset_versions v USING (dataset_uuid)
WHERE d.org_id = $1 AND d.dataset_uuid = $2 AND v.dataset_version = $3;

-- name: get_version
SELECT d.org_id, v.storage_prefix, v.manifest
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE v.dataset_uuid = $1 AND v.dataset_version = $2;

-- name: insert_audit
-- One row per query: a task's (task_id), a user's (user_id) or an operator's at the CLI
-- (neither); `source` says which; $5 = the datasets read, the first one also as dataset_id.
-- The SQL's hash only, never its text.
INSERT INTO data.query_audit
    (org_id, task_id, user_id, source, dataset_id, columns_accessed, result_row_count, sql_sha256,
     dataset_ids)
VALUES ($1, $2, $3, $4, ($5::uuid[])[1], $6, $7, $8, $5::uuid[]);

-- name: insert_audits
-- The rows of a batch of queries, as insert_audit one by one; $5: each row's datasets as an
-- array literal ('{uuid,uuid}'), $6: each row's columns as JSON text.
INSERT INTO data.query_audit
    (org_id, task_id, user_id, source, dataset_id, columns_accessed, result_row_count, sql_sha256,
     dataset_ids)
SELECT a.org_id, a.task_id, a.user_id, a.source, (a.datasets::uuid[])[1], a.columns::jsonb,
       a.row_count, a.sha256, a.datasets::uuid[]
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::text[])
    AS a(org_id, task_id, user_id, source, datasets, columns, row_count, sha256);
