-- Alerts (SPEC §12): definitions and the evaluation tasks of committed ranges.

-- name: upsert_alert
INSERT INTO state.alert_definitions (alert_id, org_id, name, dataset_uuid, spec, start_block, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (alert_id) DO UPDATE
SET dataset_uuid = $4, spec = $5, enabled = $7, updated_at = now()
RETURNING (xmax = 0) AS created, start_block;

-- name: alert_by_name
SELECT * FROM state.alert_definitions WHERE org_id = $1 AND name = $2;

-- name: list_alerts
SELECT a.alert_id, a.name, a.enabled, a.start_block, a.spec, d.name AS dataset, a.created_at
FROM state.alert_definitions a JOIN state.datasets d USING (dataset_uuid)
WHERE a.org_id = $1 ORDER BY a.name;

-- name: alerts_of_dataset
SELECT alert_id, org_id, name, dataset_uuid, spec, start_block FROM state.alert_definitions
WHERE dataset_uuid = $1 AND enabled;

-- name: committed_end
-- Where a `start: latest` alert begins: after everything committed so far.
SELECT coalesce(max(range_end), 0) FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL;

-- name: partitions_after
-- Live partitions a backfill evaluates (those ending after the start block).
SELECT partition_id, range_start, range_end FROM state.dataset_partitions
WHERE dataset_uuid = $1 AND removed_seq IS NULL AND range_end > $2 ORDER BY range_start;

-- name: source_chain
-- The chain a dataset is synced from (for block hashes and timestamps of events), and the
-- job whose relations an evaluation is granted: a chain job's, or for a DAG's output the
-- DAG's (its outputs are `dag.job`), with the chain its jobs read, upstream at any depth.
SELECT j.chain_id, j.rpc_pool, j.name AS job, d.name AS dataset FROM state.chain_streams s
JOIN state.chain_jobs j USING (job_id) JOIN state.datasets d ON d.dataset_uuid = s.dataset_uuid
WHERE s.dataset_uuid = $1
UNION ALL
(WITH RECURSIVE up (job_uuid, depth) AS (
    SELECT job_uuid, 0 FROM state.dag_jobs WHERE dataset_uuid = $1
    UNION
    SELECT u.job_uuid, up.depth + 1
    FROM up
    JOIN state.dag_jobs me ON me.job_uuid = up.job_uuid
    CROSS JOIN LATERAL jsonb_array_elements(me.inputs) AS i (item)
    JOIN state.dag_jobs u ON u.dag_id = me.dag_id AND u.name = i.item ->> 'name'
    WHERE i.item ->> 'kind' = 'job' AND up.depth < 64
)
SELECT c.chain_id, c.rpc_pool, g.name AS job, d.name AS dataset
FROM up
JOIN state.dag_jobs me ON me.job_uuid = up.job_uuid
JOIN state.dags g ON g.dag_id = me.dag_id
CROSS JOIN LATERAL jsonb_array_elements(me.inputs) AS i (item)
JOIN state.chain_jobs c ON c.org_id = me.org_id AND c.name = i.item ->> 'name'
JOIN state.datasets d ON d.dataset_uuid = $1
WHERE i.item ->> 'kind' = 'chain'
ORDER BY up.depth, c.name
LIMIT 1)

-- name: evaluation_counts
SELECT t.status, count(*) AS n FROM state.tasks t
WHERE t.payload->'alert'->>'alert_id' = $1::text GROUP BY t.status;

-- name: alert_events
-- (data DB) The events of one alert of one org.
SELECT dedupe_key, event_time, block_number, block_hash, tx_hash, payload, created_at
FROM data.alert_events WHERE org_id = $1 AND alert_definition_id = $2
ORDER BY block_number, dedupe_key LIMIT $3;

-- name: alert_channels
-- (delivery) An alert's name, org and spec (its channels); secrets are never stored.
SELECT alert_id, org_id, name, spec FROM state.alert_definitions WHERE alert_id = $1;

-- name: event_count
-- (data DB)
SELECT count(*) FROM data.alert_events WHERE org_id = $1 AND alert_definition_id = $2;

-- name: delete_alert
-- Deliveries still pending fail with "the alert no longer exists"; events are kept.
DELETE FROM state.alert_definitions WHERE org_id = $1 AND name = $2 RETURNING alert_id;

-- name: task_alert
-- The alert evaluation of a task (UDF rules ask for the block headers of their range).
SELECT payload->'alert' AS alert FROM state.tasks
WHERE task_id = $1 AND payload->>'operator' = 'alert_eval';

-- name: all_event_count
-- Every org's events (`trace status` of an embedded, one-machine installation).
SELECT count(*) FROM data.alert_events;
