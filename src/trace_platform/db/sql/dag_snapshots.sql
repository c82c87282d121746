-- Whole-snapshot DAG jobs (SPEC §19): their schedule state, runs and status.

-- name: snapshot_jobs
-- Whole-snapshot jobs that may run: active, of an unpaused DAG, current or building (a
-- retired generation is kept, not computed).
SELECT j.job_uuid FROM state.dag_jobs j JOIN state.dags d USING (dag_id)
WHERE j.status = 'active' AND NOT d.paused AND j.window_kind = 'all'
  AND j.role IN ('current', 'building')
ORDER BY j.position, j.job_uuid;

-- name: upsert_snapshot_job
-- At apply: a new job's schedule begins now (its first slot is the first after it); a job
-- whose generation changed ($4) runs again (its input marks are forgotten).
INSERT INTO state.dag_snapshot_jobs (job_uuid, schedule, min_interval_seconds, last_slot)
VALUES ($1, $2, $3, now())
ON CONFLICT (job_uuid) DO UPDATE
SET schedule = $2, min_interval_seconds = $3,
    last_slot = CASE WHEN state.dag_snapshot_jobs.schedule IS NOT DISTINCT FROM $2
                     THEN state.dag_snapshot_jobs.last_slot ELSE now() END,
    input_marks = CASE WHEN $4 THEN NULL ELSE state.dag_snapshot_jobs.input_marks END,
    updated_at = now();

-- name: lock_snapshot_job
SELECT * FROM state.dag_snapshot_jobs WHERE job_uuid = $1 FOR UPDATE;

-- name: input_marks
-- The current version of each dataset a job reads: a partitioned dataset's commit, a
-- registered dataset's latest version.
SELECT r.dataset_uuid::text AS dataset,
       CASE WHEN ds.kind = 'partitions' THEN 'snap-' || ds.commit_seq
            ELSE (SELECT v.dataset_version FROM state.dataset_versions v
                  WHERE v.dataset_uuid = r.dataset_uuid ORDER BY v.created_at DESC LIMIT 1)
       END AS version
FROM state.dag_reads r JOIN state.datasets ds USING (dataset_uuid)
WHERE r.job_uuid = $1
ORDER BY 1;

-- name: insert_run
INSERT INTO state.dag_ranges (task_id, job_uuid, generation, epoch, range_start, range_end, slot)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (task_id) DO NOTHING;

-- name: has_run_of_epoch
-- Whether a job's current generation has planned a run in its current epoch.
SELECT EXISTS (SELECT 1 FROM state.dag_ranges
               WHERE job_uuid = $1 AND generation = $2 AND epoch = $3);

-- name: covered_before
-- The furthest block a job's generation's earlier runs covered (none: it never ran).
SELECT max(range_end) FROM state.dag_ranges
WHERE job_uuid = $1 AND generation = $2 AND status IN ('committed', 'replaced');

-- name: record_run
UPDATE state.dag_snapshot_jobs
SET last_slot = coalesce($2, last_slot), missed_slots = missed_slots + $3,
    last_missed = CASE WHEN $2 IS NULL THEN last_missed ELSE $3 END,
    runs = runs + 1, planned_at = $4, input_marks = $5, updated_at = now()
WHERE job_uuid = $1;

-- name: remove_live_partitions
-- A run's commit retires the output's previous version (readers pinned to it keep it).
UPDATE state.dataset_partitions SET removed_seq = $2, removed_at = now()
WHERE dataset_uuid = $1 AND removed_seq IS NULL
RETURNING partition_id;

-- name: snapshot_status_of_dag
-- Per whole-snapshot job of a DAG: its schedule state, its last committed run and its
-- output's current commit.
SELECT s.*, ds.commit_seq AS version, last.committed_at AS last_run_at, last.slot AS last_run_slot
FROM state.dag_snapshot_jobs s
JOIN state.dag_jobs j USING (job_uuid)
JOIN state.datasets ds ON ds.dataset_uuid = j.dataset_uuid
LEFT JOIN LATERAL (
    SELECT r.committed_at, r.slot FROM state.dag_ranges r
    WHERE r.job_uuid = s.job_uuid AND r.committed_at IS NOT NULL  -- (since replaced, too)
    ORDER BY r.committed_at DESC LIMIT 1
) last ON true
WHERE j.dag_id = $1;
