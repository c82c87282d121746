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
