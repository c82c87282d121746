-- DAGs (SPEC §19–20): user-defined jobs whose outputs are partitioned datasets derived from
-- committed input partitions, with the lineage that carries a replacement downstream.

CREATE TABLE state.dags (
    dag_id     uuid PRIMARY KEY,            -- uuid5(org, name)
    org_id     uuid NOT NULL,
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    paused     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

-- One row per job of a DAG. `generation` is the job's definition hash (what it computes);
-- `epoch` is bumped when its inputs lose committed ranges (a reorg, an upstream
-- recompute), so the recomputed ranges are new tasks. Both are part of a task's id.
CREATE TABLE state.dag_jobs (
    job_uuid        uuid PRIMARY KEY,       -- uuid5(dag, job)
    dag_id          uuid NOT NULL REFERENCES state.dags (dag_id) ON DELETE CASCADE,
    org_id          uuid NOT NULL,
    name            text NOT NULL,
    dataset_uuid    uuid NOT NULL,          -- the output relation `{dag}.{job}`
    window_kind     text NOT NULL DEFAULT 'range' CHECK (window_kind IN ('range', 'all')),
    generation      text NOT NULL,
    epoch           int NOT NULL DEFAULT 0,
    definition      jsonb NOT NULL,         -- inputs, sql, unique_key, limits (validated)
    inputs          jsonb NOT NULL,         -- resolved: [{kind, name, dataset_uuids, range}]
    position        int NOT NULL,           -- dependency order within the DAG
    from_block      bigint NOT NULL DEFAULT 0,
    cursor          bigint NOT NULL DEFAULT 0,   -- next block to schedule
    max_concurrency int NOT NULL CHECK (max_concurrency >= 1),
    max_attempts    int NOT NULL CHECK (max_attempts >= 1),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped', 'removed')),
    last_error      text NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dag_id, name)
);

-- The ledger of a job's ranges, as chain_ranges is of a stream's.
CREATE TABLE state.dag_ranges (
    task_id      uuid PRIMARY KEY,          -- uuid5(job, generation, epoch, start, end)
    job_uuid     uuid NOT NULL REFERENCES state.dag_jobs (job_uuid) ON DELETE CASCADE,
    generation   text NOT NULL,
    epoch        int NOT NULL,
    range_start  bigint NOT NULL,
    range_end    bigint NOT NULL CHECK (range_end > range_start),
    status       text NOT NULL DEFAULT 'scheduled'
                 CHECK (status IN ('scheduled', 'committed', 'failed', 'replaced')),
    error        text NULL,
    partition_id uuid NULL,                 -- the output partition, once committed
    created_at   timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz NULL
);
CREATE INDEX dag_ranges_open_idx ON state.dag_ranges (job_uuid) WHERE status = 'scheduled';
CREATE INDEX dag_ranges_job_idx ON state.dag_ranges (job_uuid, range_start);

-- Lineage: the input partitions an output partition was computed from (which dataset,
-- which partition, the blocks it held). A replaced input range finds what derived from it
-- by (input dataset, range); a merge-only compaction changes partition ids, never ranges,
-- so it invalidates nothing.
CREATE TABLE state.dag_lineage (
    partition_id       uuid NOT NULL,       -- the output partition
    input_dataset_uuid uuid NOT NULL,
    input_partition_id uuid NOT NULL,
    range_start        bigint NOT NULL,
    range_end          bigint NOT NULL,
    PRIMARY KEY (partition_id, input_partition_id)
);
CREATE INDEX dag_lineage_input_idx ON state.dag_lineage (input_dataset_uuid, range_end);

-- What each job reads, by dataset: the scheduler finds a replaced range's dependents here.
-- `bounded`: read within the job's range (chain and job inputs); else read whole at its
-- snapshot (a registered dataset), whose new version recomputes the job.
CREATE TABLE state.dag_reads (
    job_uuid     uuid NOT NULL REFERENCES state.dag_jobs (job_uuid) ON DELETE CASCADE,
    dataset_uuid uuid NOT NULL,
    bounded      boolean NOT NULL,
    version      text NULL,                -- the version a whole read was computed at
    PRIMARY KEY (job_uuid, dataset_uuid)
);
CREATE INDEX dag_reads_dataset_idx ON state.dag_reads (dataset_uuid);
