-- The user API and console (SPEC §13): org-scoped reads. Every statement names the org.

-- name: tasks_page
-- Keyset pagination, newest first: ($3, $4) is the (created_at, task_id) of the last row of
-- the previous page. Served by tasks_org_status_created_idx / tasks_org_created_idx.
SELECT task_id, status, attempt, max_attempts, created_at, updated_at, last_error,
       payload->>'operator' AS operator, payload->>'runtime' AS runtime
FROM state.tasks
WHERE org_id = $1 AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, task_id) < ($3, $4::uuid))
  AND ($6::timestamptz IS NULL OR created_at >= $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
ORDER BY created_at DESC, task_id DESC
LIMIT $5;

-- name: task_of_org
SELECT task_id, org_id, status, attempt, max_attempts, lease_expires_at, worker_id, payload,
       next_retry_at, last_outcome, last_error, outputs, created_at, updated_at
FROM state.tasks WHERE task_id = $1 AND org_id = $2;

-- name: task_events
SELECT attempt, event, created_at FROM state.task_events WHERE task_id = $1
ORDER BY attempt, created_at LIMIT 500;

-- name: datasets_of_org
SELECT d.name, d.dataset_uuid, d.kind, d.created_at,
       CASE WHEN d.kind = 'partitions' THEN 'snap-' || d.commit_seq
            ELSE (SELECT v.dataset_version FROM state.dataset_versions v
                  WHERE v.dataset_uuid = d.dataset_uuid ORDER BY v.created_at DESC LIMIT 1)
       END AS current_version
FROM state.datasets d WHERE d.org_id = $1 ORDER BY d.name;

-- name: dataset_of_org
SELECT dataset_uuid, name, kind, created_at, commit_seq FROM state.datasets
WHERE org_id = $1 AND name = $2;

-- name: dataset_partitions
SELECT range_start, range_end, row_count, size_bytes, added_seq, compacted
FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL ORDER BY range_start LIMIT $2;

-- name: dataset_versions
SELECT dataset_version, created_at, jsonb_array_length(manifest->'files') AS files
FROM state.dataset_versions WHERE dataset_uuid = $1 ORDER BY created_at DESC LIMIT 50;

-- name: status_estimate
-- Tasks per status of an org. Exact below a million tasks per status would need a scan;
-- the console shows these counts from this index-only aggregate.
SELECT status, count(*) AS n FROM state.tasks WHERE org_id = $1 GROUP BY status;

-- name: bundles_of_org
SELECT bundle_id, sha256, language, entrypoint, size_bytes, created_at FROM state.udf_bundles
WHERE org_id = $1 ORDER BY created_at DESC LIMIT $2;

-- name: queue_depths
SELECT queue_name, count(*) AS depth FROM state.queue_messages GROUP BY queue_name;

-- name: dag_job_row
-- A DAG job's row as the console's job page shows it: the current one, or the row
-- generation $4 of the DAG reads as (a building or kept generation).
SELECT d.dag_id, d.generation AS dag_generation, d.building_generation, j.job_uuid, j.name,
       j.dataset_uuid, j.generation, j.window_kind, j.role, j.status, j.inputs, j.from_block
FROM state.dags d
JOIN state.dag_jobs j ON j.dag_id = d.dag_id AND j.name = $3
WHERE d.org_id = $1 AND d.name = $2
  AND (($4::int IS NULL AND j.role = 'current')
       OR j.job_uuid = (SELECT (g.jobs ->> $3)::uuid FROM state.dag_generations g
                        WHERE g.dag_id = d.dag_id AND g.generation = $4));

-- name: generations_of_job_row
-- The DAG generations that read as this job row (an unchanged job serves several).
SELECT generation, state FROM state.dag_generations
WHERE dag_id = $1 AND jobs ->> $2 = $3::text AND state <> 'purged'
ORDER BY generation;

-- name: job_partitions_page
-- A job row's live partitions by range, keyset-paged after range start $3 (served by
-- dataset_partitions_live_idx), with the range ledger's generation and commit time.
SELECT p.partition_id, p.range_start, p.range_end, p.row_count, p.size_bytes,
       coalesce(r.committed_at, p.created_at) AS committed_at, r.generation, r.task_id
FROM state.dataset_partitions p
LEFT JOIN LATERAL (
    SELECT rr.committed_at, rr.generation, rr.task_id FROM state.dag_ranges rr
    WHERE rr.job_uuid = $2 AND rr.range_start = p.range_start
      AND rr.partition_id = p.partition_id
    LIMIT 1
) r ON true
WHERE p.dataset_uuid = $1 AND p.removed_seq IS NULL
  AND ($3::bigint IS NULL OR p.range_start > $3)
ORDER BY p.range_start
LIMIT $4;

-- name: lineage_of_partitions
-- What each partition was computed from: the input partitions and the block range read
-- from each, with the input's dataset name and, for a job of a DAG, that job row.
SELECT l.partition_id, l.input_dataset_uuid, l.input_partition_id, l.range_start,
       l.range_end, ds.name AS dataset_name, ij.name AS input_job,
       ij.generation AS input_generation, dd.name AS input_dag
FROM state.dag_lineage l
LEFT JOIN state.datasets ds ON ds.dataset_uuid = l.input_dataset_uuid
LEFT JOIN state.dag_jobs ij ON ij.dataset_uuid = l.input_dataset_uuid
LEFT JOIN state.dags dd ON dd.dag_id = ij.dag_id
WHERE l.partition_id = ANY($1::uuid[])
ORDER BY l.partition_id, ds.name, l.range_start;
