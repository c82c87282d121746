-- Chain sync (SPEC §11): applied specs, jobs and their streams, the ledger of scheduled
-- ranges, and datasets made of committed partitions read through snapshots.

CREATE TABLE state.specs (
    org_id     uuid NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    body       jsonb NOT NULL,          -- the validated spec, normalised
    sha256     text NOT NULL,           -- of the normalised body: a re-apply changes nothing
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, kind, name)
);

CREATE TABLE state.chain_jobs (
    job_id          uuid PRIMARY KEY,   -- uuid5(org, name)
    org_id          uuid NOT NULL,
    name            text NOT NULL,
    chain_id        bigint NOT NULL,
    rpc_pool        text NOT NULL,
    mode            jsonb NOT NULL,
    compaction      jsonb NOT NULL DEFAULT '{}',
    paused          boolean NOT NULL DEFAULT false,
    head_number     bigint NULL,        -- last head the observer saw
    head_changed_at timestamptz NULL,   -- when that head number last moved
    head_checked_at timestamptz NULL,   -- last successful poll
    head_error      text NULL,          -- stale_head / rpc_unavailable / chain_id_mismatch ...
    reorgs          int NOT NULL DEFAULT 0,
    last_reorg      jsonb NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

CREATE TABLE state.chain_streams (
    job_id        uuid NOT NULL REFERENCES state.chain_jobs (job_id) ON DELETE CASCADE,
    stream        text NOT NULL,
    dataset_uuid  uuid NOT NULL,
    cryo_dataset  text NOT NULL,
    chunk_size    int NOT NULL CHECK (chunk_size >= 1),
    max_inflight  int NOT NULL CHECK (max_inflight >= 1),
    cursor        bigint NOT NULL,      -- next block to schedule
    generation    int NOT NULL DEFAULT 0,  -- bumped by a reorg: re-synced ranges get new task ids
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped')),
    last_error    text NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, stream)
);

CREATE TABLE state.chain_ranges (
    task_id      uuid PRIMARY KEY,      -- uuid5(job, stream, start, end[, generation])
    job_id       uuid NOT NULL,
    stream       text NOT NULL,
    range_start  bigint NOT NULL,
    range_end    bigint NOT NULL CHECK (range_end > range_start),
    generation   int NOT NULL,
    status       text NOT NULL DEFAULT 'scheduled'
                 CHECK (status IN ('scheduled', 'committed', 'failed', 'replaced')),
    error        text NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz NULL,
    last_block_time timestamptz NULL,   -- timestamp of block range_end - 1 (lag in seconds)
    FOREIGN KEY (job_id, stream) REFERENCES state.chain_streams (job_id, stream) ON DELETE CASCADE
);
CREATE INDEX chain_ranges_open_idx ON state.chain_ranges (job_id, stream)
    WHERE status = 'scheduled';
CREATE INDEX chain_ranges_stream_idx ON state.chain_ranges (job_id, stream, range_start);

CREATE TABLE state.chain_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL,
    kind       text NOT NULL,            -- chain.reorg, chain.stream_stopped, ...
    detail     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chain_events_job_idx ON state.chain_events (job_id, id);

-- A dataset is either a set of content-addressed versions (`trace dataset register`) or the
-- union of committed partitions (chain sync), read at a snapshot = a commit sequence number.
ALTER TABLE state.datasets ADD COLUMN kind text NOT NULL DEFAULT 'versions'
    CHECK (kind IN ('versions', 'partitions'));
ALTER TABLE state.datasets ADD COLUMN commit_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE state.datasets ADD COLUMN storage_prefix text NULL;

CREATE TABLE state.dataset_partitions (
    partition_id      uuid PRIMARY KEY,
    dataset_uuid      uuid NOT NULL REFERENCES state.datasets (dataset_uuid),
    range_start       bigint NOT NULL,
    range_end         bigint NOT NULL CHECK (range_end > range_start),
    files             jsonb NOT NULL,     -- [{uri, size, sha256, rows, min_block, max_block}]
    row_count         bigint NOT NULL,
    size_bytes        bigint NOT NULL,
    first_parent_hash text NULL,          -- hash of block range_start - 1 when extracted
    last_hash         text NULL,          -- hash of block range_end - 1 when extracted
    added_seq         bigint NOT NULL,    -- visible in snapshots >= added_seq ...
    removed_seq       bigint NULL,        -- ... and < removed_seq
    producer_task_id  uuid NULL,
    compacted         boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    removed_at        timestamptz NULL,
    files_deleted     boolean NOT NULL DEFAULT false
);
-- The same range never commits twice: one live partition per start block.
CREATE UNIQUE INDEX dataset_partitions_live_idx ON state.dataset_partitions
    (dataset_uuid, range_start) WHERE removed_seq IS NULL;
CREATE INDEX dataset_partitions_seq_idx ON state.dataset_partitions (dataset_uuid, added_seq);
