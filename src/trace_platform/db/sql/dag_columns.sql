-- Where `trace apply` finds the columns of a DAG job's input relations (ops/dag_columns.py).

-- name: relation_schema_sources
-- Per dataset: a decoded table's event ABI (its stream's `decode`: the columns every
-- partition is written with); a chain stream's newest live partition holding a file (its
-- Parquet footer); a registered dataset's newest version's manifest (the version apply pins).
-- None of them (nothing committed yet): its columns are not known at apply.
SELECT d.dataset_uuid, d.kind, s.decode,
       CASE WHEN d.kind = 'partitions' AND s.decode IS NULL THEN (
           SELECT p.files FROM state.dataset_partitions p
           WHERE p.dataset_uuid = d.dataset_uuid AND p.removed_seq IS NULL
             AND jsonb_array_length(p.files) > 0
           ORDER BY p.range_start DESC LIMIT 1)
       END AS files,
       CASE WHEN d.kind = 'versions' THEN (
           SELECT v.manifest FROM state.dataset_versions v
           WHERE v.dataset_uuid = d.dataset_uuid
           ORDER BY v.created_at DESC LIMIT 1)
       END AS manifest
FROM state.datasets d
LEFT JOIN state.chain_streams s ON s.dataset_uuid = d.dataset_uuid
WHERE d.dataset_uuid = ANY($1::uuid[]);
