-- DAGs (SPEC §19-20): DAGs and their jobs, the range ledger of each job, lineage, reads.

-- name: lock_dag
SELECT * FROM state.dags WHERE dag_id = $1 FOR UPDATE;

-- name: upsert_dag
-- Applying a DAG (again) resumes it.
INSERT INTO state.dags (dag_id, org_id, name) VALUES ($1, $2, $3)
ON CONFLICT (dag_id) DO UPDATE SET paused = false, updated_at = now();

-- name: dag_by_name
SELECT * FROM state.dags WHERE org_id = $1 AND name = $2;

-- name: list_dags
SELECT d.dag_id, d.name, d.paused, d.created_at, d.updated_at,
       count(j.*) FILTER (WHERE j.status <> 'removed') AS jobs,
       count(j.*) FILTER (WHERE j.status = 'stopped') AS stopped_jobs
FROM state.dags d LEFT JOIN state.dag_jobs j USING (dag_id)
WHERE d.org_id = $1
GROUP BY d.dag_id ORDER BY d.name;

-- name: jobs_of_dag
-- The jobs readers see: each name's current row.
SELECT * FROM state.dag_jobs WHERE dag_id = $1 AND role = 'current' ORDER BY position, name;

-- name: lock_jobs_of_dag
SELECT * FROM state.dag_jobs WHERE dag_id = $1 ORDER BY name FOR UPDATE;

-- name: upsert_job
-- A new job starts at its from_block. A job whose generation changed starts over (its
-- ranges are replaced by the caller first); an unchanged one keeps its cursor and epoch.
INSERT INTO state.dag_jobs (job_uuid, dag_id, org_id, name, dataset_uuid, window_kind,
    generation, definition, inputs, position, from_block, cursor, max_concurrency,
    max_attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)
ON CONFLICT (job_uuid) DO UPDATE
SET generation = $7, definition = $8, inputs = $9, position = $10, from_block = $11,
    cursor = CASE WHEN state.dag_jobs.generation = $7 AND state.dag_jobs.status <> 'removed'
                  THEN state.dag_jobs.cursor ELSE $11 END,
    epoch = CASE WHEN state.dag_jobs.generation = $7 THEN state.dag_jobs.epoch
                 ELSE state.dag_jobs.epoch + 1 END,
    max_concurrency = $12, max_attempts = $13, status = 'active', last_error = NULL,
    updated_at = now();

-- name: clear_reads
DELETE FROM state.dag_reads WHERE job_uuid = $1;

-- name: set_reads
-- What a job reads, by dataset (replaced whole at apply, after clear_reads).
INSERT INTO state.dag_reads (job_uuid, dataset_uuid, bounded, version)
SELECT $1, t.ds, t.bounded, t.version
FROM unnest($2::uuid[], $3::boolean[], $4::text[]) AS t(ds, bounded, version);

-- name: remove_job
UPDATE state.dag_jobs SET status = 'removed', updated_at = now() WHERE job_uuid = $1;

-- name: plannable_jobs
-- Per-range jobs that may schedule: active, of an unpaused DAG, current or building (a
-- retired generation is kept, not computed).
SELECT j.job_uuid FROM state.dag_jobs j JOIN state.dags d USING (dag_id)
WHERE j.status = 'active' AND NOT d.paused AND j.window_kind = 'range'
  AND j.role IN ('current', 'building')
ORDER BY j.position, j.job_uuid;

-- name: lock_job
SELECT j.*, d.name AS dag_name FROM state.dag_jobs j JOIN state.dags d USING (dag_id)
WHERE j.job_uuid = $1 FOR UPDATE OF j;

-- name: reads_of_job
SELECT r.dataset_uuid, r.bounded, r.version, ds.name
FROM state.dag_reads r JOIN state.datasets ds USING (dataset_uuid)
WHERE r.job_uuid = $1 ORDER BY ds.name;

-- name: partitions_from
-- Live partitions of a dataset that end after $2, in order (the planner's view of an input).
SELECT range_start, range_end, row_count FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2
ORDER BY range_start LIMIT $3;

-- name: in_flight
SELECT count(*) FROM state.dag_ranges WHERE job_uuid = $1 AND status = 'scheduled';

-- name: insert_ranges
INSERT INTO state.dag_ranges (task_id, job_uuid, generation, epoch, range_start, range_end)
SELECT t.task_id, $1, $2, $3, t.s, t.e
FROM unnest($4::uuid[], $5::bigint[], $6::bigint[]) AS t(task_id, s, e)
ON CONFLICT (task_id) DO NOTHING;

-- name: advance_cursor
UPDATE state.dag_jobs SET cursor = $2, updated_at = now() WHERE job_uuid = $1;

-- name: set_job_error
UPDATE state.dag_jobs SET last_error = $2, updated_at = now()
WHERE job_uuid = $1 AND last_error IS DISTINCT FROM $2;

-- name: stop_job
UPDATE state.dag_jobs SET status = 'stopped', last_error = $2, updated_at = now()
WHERE job_uuid = $1;

-- name: latest_version
SELECT dataset_version FROM state.dataset_versions WHERE dataset_uuid = $1
ORDER BY created_at DESC LIMIT 1;

-- name: range_for_task
SELECT r.*, j.dataset_uuid, j.dag_id, j.window_kind FROM state.dag_ranges r
JOIN state.dag_jobs j USING (job_uuid)
WHERE r.task_id = $1 FOR UPDATE OF r;

-- name: overlapping
-- Live partitions of a dataset overlapping [$2, $3).
SELECT partition_id, range_start, range_end FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_start < $3 AND range_end > $2
ORDER BY range_start;

-- name: insert_lineage
INSERT INTO state.dag_lineage (partition_id, input_dataset_uuid, input_partition_id,
    range_start, range_end)
SELECT $1, t.ds, t.p, t.s, t.e
FROM unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[]) AS t(ds, p, s, e)
ON CONFLICT DO NOTHING;

-- name: mark_committed
UPDATE state.dag_ranges SET status = 'committed', committed_at = now(), partition_id = $2
WHERE task_id = $1;

-- name: fail_range
UPDATE state.dag_ranges SET status = 'failed', error = $2 WHERE task_id = $1
AND status = 'scheduled'
RETURNING job_uuid, range_start, range_end;

-- name: readers_of
-- Jobs that read a dataset within their ranges (the dependents of a replaced range).
SELECT r.job_uuid FROM state.dag_reads r JOIN state.dag_jobs j USING (job_uuid)
WHERE r.dataset_uuid = $1 AND r.bounded AND j.status <> 'removed'
ORDER BY j.position, r.job_uuid;

-- name: ranges_reaching
-- A job's live ranges (scheduled or committed) that end after a block.
SELECT task_id, range_start, range_end, status FROM state.dag_ranges
WHERE job_uuid = $1 AND status IN ('scheduled', 'committed') AND range_end > $2;

-- name: replace_ranges_from
UPDATE state.dag_ranges SET status = 'replaced'
WHERE job_uuid = $1 AND status IN ('scheduled', 'committed', 'failed') AND range_end > $2
RETURNING task_id, status;

-- name: remove_partitions_from
UPDATE state.dataset_partitions SET removed_seq = $3, removed_at = now()
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2
RETURNING partition_id;

-- name: rewind_job
UPDATE state.dag_jobs
SET cursor = least(cursor, $2), epoch = epoch + 1, status = CASE WHEN status = 'stopped'
    THEN 'active' ELSE status END, last_error = NULL, updated_at = now()
WHERE job_uuid = $1;

-- name: job_progress
-- Per job of a DAG: ranges by status, rows and blocks committed, the committed prefix.
SELECT j.job_uuid,
       count(*) FILTER (WHERE r.status = 'committed') AS committed,
       count(*) FILTER (WHERE r.status = 'scheduled') AS in_flight,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       coalesce(sum(p.row_count) FILTER (WHERE r.status = 'committed'), 0) AS rows,
       max(r.range_end) FILTER (WHERE r.status = 'committed') AS committed_end
FROM state.dag_jobs j
LEFT JOIN state.dag_ranges r ON r.job_uuid = j.job_uuid AND r.generation = j.generation
     AND r.epoch = j.epoch
LEFT JOIN state.dataset_partitions p ON p.partition_id = r.partition_id
WHERE j.dag_id = $1
GROUP BY j.job_uuid;

-- name: last_range_error
SELECT error FROM state.dag_ranges WHERE job_uuid = $1 AND status = 'failed'
ORDER BY created_at DESC LIMIT 1;

-- name: delete_dag
DELETE FROM state.dags WHERE dag_id = $1 RETURNING name;

-- name: open_tasks_of_dag
SELECT r.task_id FROM state.dag_ranges r JOIN state.dag_jobs j USING (job_uuid)
WHERE j.dag_id = $1 AND r.status = 'scheduled';

-- name: set_dag_paused
UPDATE state.dags SET paused = $2, updated_at = now() WHERE dag_id = $1 RETURNING name;

-- name: open_ranges
-- A job's scheduled ranges with the state of their task.
SELECT r.task_id, r.range_start, r.range_end, t.status AS task_status, t.next_retry_at,
       t.last_error
FROM state.dag_ranges r JOIN state.tasks t USING (task_id)
WHERE r.job_uuid = $1 AND r.status = 'scheduled';

-- name: job_of_dataset
-- The DAG job whose output a dataset is (its readers' ranges follow its partitions).
SELECT job_uuid FROM state.dag_jobs WHERE dataset_uuid = $1;

-- name: set_read_version
UPDATE state.dag_reads SET version = $3 WHERE job_uuid = $1 AND dataset_uuid = $2;

-- name: chain_relations
-- The relations of a chain job (its streams and decoded tables) with their datasets.
SELECT d.name, d.dataset_uuid FROM state.chain_streams s
JOIN state.chain_jobs j USING (job_id)
JOIN state.datasets d ON d.dataset_uuid = s.dataset_uuid
WHERE j.org_id = $1 AND j.name = $2
ORDER BY d.name;

-- name: dataset_of_org
SELECT dataset_uuid, name, kind FROM state.datasets WHERE org_id = $1 AND name = $2;

-- name: input_tip
-- End of a dataset's committed prefix from block $2: the first block from which a gap starts.
SELECT coalesce(max(range_end), $2) AS tip FROM (
    SELECT range_end,
           sum(CASE WHEN range_start <= coalesce(prev_end, $2) THEN 0 ELSE 1 END)
               OVER (ORDER BY range_start) AS gaps
    FROM (SELECT range_start, range_end, lag(range_end) OVER (ORDER BY range_start) AS prev_end
          FROM state.dataset_partitions
          WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2) ordered
) marked WHERE gaps = 0;

-- name: replace_open_ranges
-- A stopped job's scheduled ranges: replaced (their tasks are canceled by the caller).
UPDATE state.dag_ranges SET status = 'replaced'
WHERE job_uuid = $1 AND status = 'scheduled'
RETURNING task_id, range_start;

-- name: dag_summaries
-- Each DAG of an org: whether its spec is applied, its jobs, and the ranges of their
-- current generations by status.
SELECT d.dag_id, d.name, d.paused, d.created_at, d.updated_at,
       EXISTS (SELECT 1 FROM state.specs s
               WHERE s.org_id = d.org_id AND s.kind = 'dag' AND s.name = d.name) AS applied,
       coalesce(j.jobs, 0) AS jobs, coalesce(j.stopped_jobs, 0) AS stopped_jobs,
       coalesce(r.committed, 0) AS committed, coalesce(r.in_flight, 0) AS in_flight,
       coalesce(r.failed, 0) AS failed
FROM state.dags d
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status <> 'removed') AS jobs,
           count(*) FILTER (WHERE status = 'stopped') AS stopped_jobs
    FROM state.dag_jobs WHERE dag_id = d.dag_id AND role = 'current'
) j ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE rr.status = 'committed') AS committed,
           count(*) FILTER (WHERE rr.status = 'scheduled' AND t.ended IS NOT TRUE) AS in_flight,
           count(*) FILTER (WHERE rr.status = 'failed' OR t.ended) AS failed
    FROM state.dag_jobs jj
    JOIN state.dag_ranges rr ON rr.job_uuid = jj.job_uuid AND rr.generation = jj.generation
    LEFT JOIN LATERAL (
        SELECT tt.status = 'canceled' OR (tt.status = 'failed' AND tt.next_retry_at IS NULL)
               AS ended
        FROM state.tasks tt WHERE tt.task_id = rr.task_id AND rr.status = 'scheduled'
    ) t ON true
    WHERE jj.dag_id = d.dag_id AND jj.status <> 'removed' AND jj.role = 'current'
) r ON true
WHERE d.org_id = $1
ORDER BY d.name;

-- name: dag_ranges_by_status
-- Per job of a DAG: its current generation's ranges by status (of every epoch: a reorg's
-- rewind leaves the ranges before the fork committed under the epoch they were made in).
-- A scheduled range whose task ended for good (failed, canceled) counts as failed, as the
-- planner will record it (a stopped job's other ranges stay so: nothing plans it).
SELECT j.job_uuid,
       count(*) FILTER (WHERE r.status = 'committed') AS committed,
       count(*) FILTER (WHERE r.status = 'scheduled' AND t.ended IS NOT TRUE) AS in_flight,
       count(*) FILTER (WHERE r.status = 'failed' OR t.ended) AS failed
FROM state.dag_jobs j
JOIN state.dag_ranges r ON r.job_uuid = j.job_uuid AND r.generation = j.generation
LEFT JOIN LATERAL (
    SELECT tt.status = 'canceled' OR (tt.status = 'failed' AND tt.next_retry_at IS NULL) AS ended
    FROM state.tasks tt WHERE tt.task_id = r.task_id AND r.status = 'scheduled'
) t ON true
WHERE j.dag_id = $1
GROUP BY j.job_uuid;

-- name: live_rows
-- Live partitions and rows of each dataset (what readers' snapshots hold).
SELECT dataset_uuid, count(*) AS partitions, coalesce(sum(row_count), 0) AS rows
FROM state.dataset_partitions
WHERE dataset_uuid = ANY($1::uuid[]) AND removed_seq IS NULL
GROUP BY dataset_uuid;

-- name: input_tips
-- `input_tip` of several (dataset, from block) pairs at once.
SELECT t.ds AS dataset_uuid, t.from_block, tip.tip
FROM unnest($1::uuid[], $2::bigint[]) AS t(ds, from_block)
CROSS JOIN LATERAL (
    SELECT coalesce(max(range_end), t.from_block) AS tip FROM (
        SELECT range_end,
               sum(CASE WHEN range_start <= coalesce(prev_end, t.from_block) THEN 0 ELSE 1 END)
                   OVER (ORDER BY range_start) AS gaps
        FROM (SELECT range_start, range_end,
                     lag(range_end) OVER (ORDER BY range_start) AS prev_end
              FROM state.dataset_partitions
              WHERE dataset_uuid = t.ds AND removed_seq IS NULL AND range_end > t.from_block
             ) ordered
    ) marked WHERE gaps = 0
) tip;

-- name: open_range_error
-- The latest error of a job's ranges still in flight (an attempt failed, a retry is due).
SELECT t.last_error FROM state.dag_ranges r JOIN state.tasks t USING (task_id)
WHERE r.job_uuid = $1 AND r.status = 'scheduled' AND t.last_error IS NOT NULL
ORDER BY t.updated_at DESC LIMIT 1;

-- name: bounded_reads_of_dag
-- The datasets each job of a DAG reads within its ranges.
SELECT r.job_uuid, r.dataset_uuid FROM state.dag_reads r
JOIN state.dag_jobs j USING (job_uuid)
WHERE j.dag_id = $1 AND r.bounded;

-- name: notify_planner
-- A DAG applied or resumed: the dispatcher's DAG scheduler plans at once, not at its next tick.
SELECT pg_notify('trace_dag_planner', '');

-- Generations (SPEC §19, invariant 21) -----------------------------------------------------

-- name: lock_dag_generations
SELECT generation, state, jobs, spec, sha256, created_at, current_at
FROM state.dag_generations WHERE dag_id = $1 ORDER BY generation FOR UPDATE;

-- name: dag_generations
SELECT generation, state, jobs, created_at, current_at
FROM state.dag_generations WHERE dag_id = $1 ORDER BY generation;

-- name: insert_generation
INSERT INTO state.dag_generations (dag_id, generation, state, spec, sha256, jobs, current_at)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $3 = 'current' THEN now() END)
ON CONFLICT (dag_id, generation) DO UPDATE SET state = $3, spec = $4, sha256 = $5, jobs = $6;

-- name: set_generation_state
UPDATE state.dag_generations
SET state = $3, current_at = CASE WHEN $3 = 'current' THEN now() ELSE current_at END
WHERE dag_id = $1 AND generation = $2;

-- name: set_dag_generations
UPDATE state.dags SET generation = $2, building_generation = $3, updated_at = now()
WHERE dag_id = $1;

-- name: insert_generation_job
-- A job row of a generation that is not current yet (or a first apply's, $14 = 'current').
INSERT INTO state.dag_jobs (job_uuid, dag_id, org_id, name, dataset_uuid, window_kind,
    generation, definition, inputs, position, from_block, cursor, max_concurrency,
    max_attempts, role)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14);

-- name: reuse_generation_job
-- A kept row of the same definition (a rollback's, an abandoned build's) builds again.
UPDATE state.dag_jobs SET role = $2, status = 'active', last_error = NULL, position = $3,
    max_concurrency = $4, max_attempts = $5, updated_at = now()
WHERE job_uuid = $1;

-- name: update_job_limits
UPDATE state.dag_jobs SET position = $2, max_concurrency = $3, max_attempts = $4,
    updated_at = now()
WHERE job_uuid = $1;

-- name: set_job_roles
UPDATE state.dag_jobs SET role = $2, status = CASE WHEN $2 = 'current' AND status = 'removed'
    THEN 'active' ELSE status END, updated_at = now()
WHERE job_uuid = ANY($1::uuid[]);

-- name: rename_datasets
-- The cut-over's catalog switch: each dataset takes its new name, in one statement.
UPDATE state.datasets d SET name = t.name
FROM unnest($1::uuid[], $2::text[]) AS t(ds, name)
WHERE d.dataset_uuid = t.ds;

-- name: repoint_alerts
-- Alert rules on a job's output follow its current generation.
UPDATE state.alert_definitions a SET dataset_uuid = t.new_ds
FROM unnest($1::uuid[], $2::uuid[]) AS t(old_ds, new_ds)
WHERE a.dataset_uuid = t.old_ds
RETURNING a.alert_id, a.dataset_uuid;

-- name: building_dags
-- DAGs with a generation being built.
SELECT dag_id FROM state.dags WHERE building_generation IS NOT NULL ORDER BY dag_id;

-- name: job_rows
SELECT j.*, ds.name AS dataset_name FROM state.dag_jobs j
JOIN state.datasets ds USING (dataset_uuid)
WHERE j.job_uuid = ANY($1::uuid[]);

-- name: lock_job_rows
SELECT * FROM state.dag_jobs WHERE job_uuid = ANY($1::uuid[]) ORDER BY job_uuid FOR UPDATE;

-- name: all_job_rows_of_dag
SELECT * FROM state.dag_jobs WHERE dag_id = $1 ORDER BY name, job_uuid FOR UPDATE;

-- name: partitions_of_datasets
-- Every partition of these datasets, live or not (a purge deletes them all).
SELECT partition_id, files FROM state.dataset_partitions WHERE dataset_uuid = ANY($1::uuid[]);

-- name: purge_lineage
DELETE FROM state.dag_lineage WHERE partition_id = ANY($1::uuid[]);

-- name: purge_partitions
DELETE FROM state.dataset_partitions WHERE dataset_uuid = ANY($1::uuid[]);

-- name: purge_jobs
DELETE FROM state.dag_jobs WHERE job_uuid = ANY($1::uuid[]);

-- name: purge_datasets
DELETE FROM state.datasets WHERE dataset_uuid = ANY($1::uuid[]);

-- name: set_spec_body
UPDATE state.specs SET body = $4, sha256 = $5, updated_at = now()
WHERE org_id = $1 AND kind = $2 AND name = $3;

-- name: dag_by_id
SELECT * FROM state.dags WHERE dag_id = $1;

-- name: db_now
SELECT clock_timestamp();

-- name: removed_since
-- Whether any partition of these datasets left readers' snapshots at or after $2.
SELECT EXISTS (SELECT 1 FROM state.dataset_partitions
               WHERE dataset_uuid = ANY($1::uuid[]) AND removed_seq IS NOT NULL
                 AND removed_at >= $2);

-- name: insert_switched_event
-- Alert rules that moved to a new generation's output evaluate its partitions.
INSERT INTO state.outbox (outbox_id, topic, payload)
VALUES ($1, 'dag.generation_switched', $2);

-- name: chain_of_dataset
-- The chain job a DAG output derives from (its DAG's first chain input).
SELECT i.item ->> 'name' FROM state.dag_jobs j
CROSS JOIN LATERAL jsonb_array_elements(j.inputs) AS i (item)
WHERE j.dag_id = (SELECT dag_id FROM state.dag_jobs WHERE dataset_uuid = $1 LIMIT 1)
  AND i.item ->> 'kind' = 'chain'
ORDER BY j.position LIMIT 1;

-- name: stored_block_files
-- The files of a task's org's relation $2 (a chain's `blocks`) live over [$3, $4): where a
-- DAG generation's re-evaluated UDF alert rule reads its block headers (no RPC).
SELECT p.files FROM state.tasks t
JOIN state.datasets d ON d.org_id = t.org_id AND d.name = $2 AND d.kind = 'partitions'
JOIN state.dataset_partitions p ON p.dataset_uuid = d.dataset_uuid AND p.removed_seq IS NULL
WHERE t.task_id = $1 AND p.range_start < $4 AND p.range_end > $3
ORDER BY p.range_start;
