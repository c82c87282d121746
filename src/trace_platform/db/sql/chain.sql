-- Chain sync (SPEC §11): specs, jobs, streams, the range ledger, partitions and snapshots.

-- name: get_spec
SELECT sha256, body FROM state.specs WHERE org_id = $1 AND kind = $2 AND name = $3 FOR UPDATE;

-- name: upsert_spec
INSERT INTO state.specs (org_id, kind, name, body, sha256) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (org_id, kind, name) DO UPDATE SET body = $4, sha256 = $5, updated_at = now();

-- name: list_specs
-- Applied specs of an org: chain syncs (state.specs) and alerts (their definitions).
SELECT kind, name, sha256, created_at, updated_at FROM state.specs WHERE org_id = $1
UNION ALL
SELECT 'alert', name, md5(spec::text), created_at, updated_at FROM state.alert_definitions
WHERE org_id = $1
ORDER BY 1, 2;

-- name: show_spec
SELECT kind, name, body, created_at, updated_at FROM state.specs
WHERE org_id = $1 AND kind = $2 AND name = $3;

-- name: delete_spec
DELETE FROM state.specs WHERE org_id = $1 AND kind = $2 AND name = $3 RETURNING name;

-- name: upsert_job
INSERT INTO state.chain_jobs (job_id, org_id, name, chain_id, rpc_pool, mode, compaction)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (job_id) DO UPDATE
SET chain_id = $4, rpc_pool = $5, mode = $6, compaction = $7, updated_at = now();

-- name: upsert_stream
-- A new stream starts at the mode's from_block; an existing one keeps its cursor, so a
-- changed file changes only what is not yet scheduled.
-- A decoded table's stream also carries its decode config ($8; NULL for cryo streams).
INSERT INTO state.chain_streams (job_id, stream, dataset_uuid, cryo_dataset, chunk_size,
                                 max_inflight, cursor, decode, backfill_blocks)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id, stream) DO UPDATE
SET cryo_dataset = $4, chunk_size = $5, max_inflight = $6, decode = $8, backfill_blocks = $9,
    status = CASE WHEN $4 = 'decode' THEN 'active' ELSE state.chain_streams.status END,
    last_error = CASE WHEN $4 = 'decode' THEN NULL ELSE state.chain_streams.last_error END,
    updated_at = now();

-- name: upsert_partitioned_dataset
INSERT INTO state.datasets (dataset_uuid, org_id, name, kind, storage_prefix)
VALUES ($1, $2, $3, 'partitions', $4)
ON CONFLICT (dataset_uuid) DO NOTHING;

-- name: dataset_kind
SELECT kind FROM state.datasets WHERE dataset_uuid = $1;

-- name: job_by_name
SELECT * FROM state.chain_jobs WHERE org_id = $1 AND name = $2;

-- name: lock_job
SELECT * FROM state.chain_jobs WHERE job_id = $1 FOR UPDATE;

-- name: jobs
-- Every job, and whether a fixed-target job has extracted all of it (every active stream
-- that reads the node has scheduled to its target and nothing is in flight): such a job
-- needs its node no more.
SELECT j.*,
       j.mode->>'kind' = 'fixed_target' AND NOT EXISTS (
           SELECT 1 FROM state.chain_streams s
           WHERE s.job_id = j.job_id AND s.cryo_dataset <> 'decode' AND s.status = 'active'
             AND s.cursor < (j.mode->>'to_block')::bigint
       ) AND NOT EXISTS (
           SELECT 1 FROM state.chain_ranges r JOIN state.chain_streams s USING (job_id, stream)
           WHERE r.job_id = j.job_id AND r.status = 'scheduled' AND s.cryo_dataset <> 'decode'
       ) AS extracted
FROM state.chain_jobs j ORDER BY j.org_id, j.name;

-- name: set_paused
UPDATE state.chain_jobs SET paused = $2, updated_at = now() WHERE job_id = $1
RETURNING paused;

-- name: record_head
-- $2 head (NULL when the poll failed), $3 error (NULL when healthy).
UPDATE state.chain_jobs
SET head_changed_at = CASE WHEN $2::bigint IS NOT NULL AND head_number IS DISTINCT FROM $2
                           THEN now() ELSE head_changed_at END,
    head_number = coalesce($2, head_number),
    head_checked_at = CASE WHEN $2::bigint IS NOT NULL THEN now() ELSE head_checked_at END,
    head_error = $3, updated_at = now()
WHERE job_id = $1
RETURNING head_number, extract(epoch FROM now() - head_changed_at)::float8 AS head_age;

-- name: set_head_error
UPDATE state.chain_jobs SET head_error = $2, updated_at = now()
WHERE job_id = $1 AND head_error IS DISTINCT FROM $2;

-- name: streams_of_job
SELECT * FROM state.chain_streams WHERE job_id = $1 ORDER BY stream;

-- name: plannable_streams
-- Streams a planner tick may schedule for; each is then locked on its own (SKIP LOCKED).
-- $1: the decoded tables' streams (cryo_dataset 'decode', planned by the derived-output
-- scheduler) or the extracted ones (the chain planner's).
SELECT s.job_id, s.stream FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)
WHERE s.status = 'active' AND NOT j.paused AND (s.cryo_dataset = 'decode') = $1::boolean;

-- name: lock_stream
SELECT s.*, j.org_id, j.chain_id, j.rpc_pool, j.mode, j.head_number, j.head_error, j.paused,
       j.compaction
FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)
WHERE s.job_id = $1 AND s.stream = $2
FOR UPDATE OF s SKIP LOCKED;

-- name: open_ranges
-- Scheduled ranges with the state of their task.
SELECT r.task_id, r.range_start, r.range_end, t.status AS task_status, t.next_retry_at,
       t.last_error
FROM state.chain_ranges r JOIN state.tasks t USING (task_id)
WHERE r.job_id = $1 AND r.stream = $2 AND r.status = 'scheduled';

-- name: taken_starts
-- Starts at or after the cursor already scheduled or committed (skipped by the planner).
SELECT range_start FROM state.chain_ranges
WHERE job_id = $1 AND stream = $2 AND range_start >= $3 AND status IN ('scheduled', 'committed');

-- name: insert_ranges
INSERT INTO state.chain_ranges (task_id, job_id, stream, range_start, range_end, generation)
SELECT t.task_id, $1, $2, t.s, t.e, $3
FROM unnest($4::uuid[], $5::bigint[], $6::bigint[]) AS t(task_id, s, e)
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id;

-- name: insert_range_tasks
-- Tasks of new ranges and their wake-ups; a task id that exists already adds nothing.
WITH created AS (
    INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts)
    SELECT t.task_id, $3::uuid, 'queued', t.payload, $4
    FROM unnest($1::uuid[], $2::jsonb[]) AS t(task_id, payload)
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id, payload
)
INSERT INTO state.outbox (outbox_id, topic, payload)
SELECT state.wakeup_outbox_id(task_id, 1), state.wakeup_topic(payload),
       jsonb_build_object('task_id', task_id)
FROM created
ON CONFLICT (outbox_id) DO NOTHING;

-- name: advance_cursor
UPDATE state.chain_streams SET cursor = $3, updated_at = now()
WHERE job_id = $1 AND stream = $2;

-- name: fail_range
UPDATE state.chain_ranges SET status = 'failed', error = $2 WHERE task_id = $1 AND status = 'scheduled';

-- name: stop_stream
UPDATE state.chain_streams SET status = 'stopped', last_error = $3, updated_at = now()
WHERE job_id = $1 AND stream = $2;

-- name: set_stream_error
UPDATE state.chain_streams SET last_error = $3, updated_at = now()
WHERE job_id = $1 AND stream = $2 AND last_error IS DISTINCT FROM $3;

-- name: retry_stream
-- Failed ranges ending after $3 are replaced; the stream restarts from the earliest of them
-- under a new generation (new task ids), and the planner skips what is committed.
WITH replaced AS (
    UPDATE state.chain_ranges SET status = 'replaced'
    WHERE job_id = $1 AND stream = $2 AND status = 'failed' AND range_end > $3
    RETURNING range_start
)
UPDATE state.chain_streams s
SET status = 'active', last_error = NULL, generation = s.generation + 1,
    cursor = least(s.cursor, coalesce((SELECT min(range_start) FROM replaced), s.cursor), $4),
    updated_at = now()
WHERE s.job_id = $1 AND s.stream = $2
RETURNING s.cursor, (SELECT count(*) FROM replaced) AS replaced;

-- name: insert_event
INSERT INTO state.chain_events (job_id, kind, detail) VALUES ($1, $2, $3);

-- name: recent_events
SELECT kind, detail, created_at FROM state.chain_events WHERE job_id = $1
ORDER BY id DESC LIMIT $2;

-- name: undecodable_logs
-- Per decoded table of a job: the logs of its event that its ABI could not decode, summed
-- over its ranges still committed (a replaced or re-decoded range's count leaves with it).
SELECT r.stream, sum((e.detail->>'undecodable')::bigint) AS n
FROM state.chain_events e
JOIN state.chain_ranges r ON r.task_id = (e.detail->>'task_id')::uuid
WHERE e.job_id = $1 AND e.kind = 'chain.logs_undecodable' AND r.status = 'committed'
GROUP BY r.stream;

-- name: range_counts
SELECT stream, status, count(*) AS n, coalesce(sum(range_end - range_start), 0) AS blocks,
       max(range_end) FILTER (WHERE status = 'committed') AS max_end
FROM state.chain_ranges WHERE job_id = $1 GROUP BY stream, status;

-- name: contiguous_tip
-- End of the committed prefix of a stream: the first block from which a gap starts.
SELECT coalesce(max(range_end), $3) AS tip FROM (
    SELECT range_start, range_end,
           sum(CASE WHEN range_start = prev_end OR prev_end IS NULL AND range_start = $3
                    THEN 0 ELSE 1 END) OVER (ORDER BY range_start) AS gaps
    FROM (SELECT range_start, range_end,
                 lag(range_end) OVER (ORDER BY range_start) AS prev_end
          FROM state.chain_ranges
          WHERE job_id = $1 AND stream = $2 AND status = 'committed') ordered
) marked WHERE gaps = 0;

-- name: recent_commit_rate
-- Blocks committed in the last $3 seconds (for blocks/s).
SELECT coalesce(sum(range_end - range_start), 0) AS blocks
FROM state.chain_ranges
WHERE job_id = $1 AND stream = $2 AND status = 'committed' AND committed_at > now() - make_interval(secs => $3);

-- name: tip_block_time
SELECT last_block_time FROM state.chain_ranges
WHERE job_id = $1 AND stream = $2 AND status = 'committed' AND range_end = $3
ORDER BY committed_at DESC LIMIT 1;

-- name: range_for_task
SELECT r.*, s.dataset_uuid, s.cryo_dataset, s.decode FROM state.chain_ranges r
JOIN state.chain_streams s USING (job_id, stream)
WHERE r.task_id = $1 FOR UPDATE OF r;

-- name: neighbours
-- Live partitions that end where this range starts or start where it ends, and any overlap.
SELECT partition_id, range_start, range_end, first_parent_hash, last_hash
FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_start <= $3 AND range_end >= $2;

-- name: bump_commit_seq
UPDATE state.datasets SET commit_seq = commit_seq + 1 WHERE dataset_uuid = $1
RETURNING commit_seq;

-- name: insert_partition
INSERT INTO state.dataset_partitions (partition_id, dataset_uuid, range_start, range_end, files,
    row_count, size_bytes, first_parent_hash, last_hash, added_seq, producer_task_id, compacted)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: mark_committed
UPDATE state.chain_ranges SET status = 'committed', committed_at = now(),
    last_block_time = to_timestamp($2::float8)
WHERE task_id = $1;

-- name: insert_committed_event
INSERT INTO state.outbox (outbox_id, topic, payload) VALUES ($1, 'dataset.range_committed', $2)
ON CONFLICT (outbox_id) DO NOTHING;

-- name: watched_partitions
-- Live partitions of a job whose last block is within the watch depth of the head.
SELECT p.dataset_uuid, p.range_start, p.range_end, p.last_hash, s.stream
FROM state.chain_streams s
JOIN state.dataset_partitions p ON p.dataset_uuid = s.dataset_uuid AND p.removed_seq IS NULL
WHERE s.job_id = $1 AND p.range_end > $2 AND p.last_hash IS NOT NULL;

-- name: live_logs_partitions
-- The committed raw logs a decoded stream reads next: live partitions ending after $2.
SELECT range_start, range_end, files, first_parent_hash, last_hash
FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2
ORDER BY range_start LIMIT $3;

-- name: stream_dataset
SELECT s.dataset_uuid, s.chunk_size FROM state.chain_streams s
WHERE s.job_id = $1 AND s.stream = $2;

-- name: live_children
-- The factory children of a contract created before block $3 (by live partitions only).
SELECT c.address, min(c.block_number) AS block_number
FROM state.chain_children c
JOIN state.dataset_partitions p ON p.partition_id = c.partition_id AND p.removed_seq IS NULL
WHERE c.job_id = $1 AND c.contract = $2 AND c.block_number < $3
GROUP BY c.address ORDER BY 2, 1;

-- name: insert_children
INSERT INTO state.chain_children (job_id, contract, address, block_number, log_index, partition_id)
SELECT $1, $2, a, b, i, $6
FROM unnest($3::text[], $4::bigint[], $5::int[]) AS t(a, b, i)
ON CONFLICT DO NOTHING;

-- name: lock_streams_of_job
SELECT * FROM state.chain_streams WHERE job_id = $1 ORDER BY stream FOR UPDATE;

-- name: scheduled_range_tasks_from
-- The tasks of a stream's ranges in flight (scheduled) that end after the fork block.
SELECT task_id FROM state.chain_ranges
WHERE job_id = $1 AND stream = $2 AND range_end > $3 AND status = 'scheduled'
ORDER BY task_id;

-- name: replace_ranges_from
-- Ranges (scheduled or committed) that end after the fork block are replaced.
UPDATE state.chain_ranges SET status = 'replaced'
WHERE job_id = $1 AND stream = $2 AND range_end > $3 AND status IN ('scheduled', 'committed')
RETURNING task_id, range_start;

-- name: remove_partitions_from
UPDATE state.dataset_partitions SET removed_seq = $3, removed_at = now()
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2
RETURNING partition_id;

-- name: rewind_stream
UPDATE state.chain_streams
SET cursor = least(cursor, $3), generation = generation + 1, updated_at = now()
WHERE job_id = $1 AND stream = $2;

-- name: record_reorg
UPDATE state.chain_jobs SET reorgs = reorgs + 1, last_reorg = $2, updated_at = now()
WHERE job_id = $1;

-- name: snapshot_files
-- The partitions of a snapshot (a commit sequence number) overlapping [$3, $4).
SELECT range_start, range_end, files FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND added_seq <= $2 AND (removed_seq IS NULL OR removed_seq > $2)
  AND range_end > $3 AND range_start < $4
ORDER BY range_start;

-- name: partitioned_dataset
SELECT d.dataset_uuid, d.org_id, d.name, d.kind, d.commit_seq, d.storage_prefix
FROM state.datasets d
WHERE d.org_id = $1 AND (d.name = $2 OR d.dataset_uuid::text = $2) AND d.kind = 'partitions';

-- name: job_relations
-- The relations of a chain job (its streams and decoded tables): partitioned datasets
-- named `job.<relation>`.
SELECT d.name FROM state.datasets d
WHERE d.org_id = $1 AND d.kind = 'partitions' AND starts_with(d.name, $2 || '.')
ORDER BY d.name;

-- name: dataset_by_uuid
SELECT dataset_uuid, org_id, name, kind, commit_seq, storage_prefix FROM state.datasets
WHERE dataset_uuid = $1;

-- name: live_partitions
SELECT partition_id, range_start, range_end, files, row_count, size_bytes, compacted,
       first_parent_hash, last_hash
FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL ORDER BY range_start;

-- name: compactable_datasets
SELECT s.dataset_uuid, j.job_id, j.compaction, j.head_number, j.mode
FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)
WHERE (j.compaction->>'enabled')::boolean IS NOT FALSE;

-- name: lock_partitions
SELECT partition_id, range_start, range_end, removed_seq FROM state.dataset_partitions
WHERE partition_id = ANY($1::uuid[]) FOR UPDATE;

-- name: retire_partitions
UPDATE state.dataset_partitions SET removed_seq = $2, removed_at = now()
WHERE partition_id = ANY($1::uuid[]) AND removed_seq IS NULL;

-- name: lock_dataset
SELECT commit_seq FROM state.datasets WHERE dataset_uuid = $1 FOR UPDATE;

-- name: collectable_partitions
-- Removed long enough ago that no token can still hold a snapshot that includes them.
SELECT partition_id, files FROM state.dataset_partitions
WHERE removed_seq IS NOT NULL AND NOT files_deleted
  AND removed_at < now() - make_interval(secs => $1)
LIMIT $2;

-- name: mark_files_deleted
UPDATE state.dataset_partitions SET files_deleted = true WHERE partition_id = ANY($1::uuid[]);

-- name: report_endpoints
INSERT INTO state.rpc_endpoints (pool, endpoint, process, view, updated_at)
SELECT p, e, $3, v, now() FROM unnest($1::text[], $2::text[], $4::jsonb[]) AS r(p, e, v)
ON CONFLICT (pool, endpoint, process) DO UPDATE SET view = EXCLUDED.view, updated_at = now();

-- name: pool_endpoints
-- Reports of the last 10 minutes, newest first (older ones are of processes gone).
SELECT pool, endpoint, process, view, extract(epoch FROM now() - updated_at) AS age
FROM state.rpc_endpoints
WHERE pool = ANY($1::text[]) AND updated_at > now() - interval '10 minutes'
ORDER BY pool, endpoint, updated_at DESC;
