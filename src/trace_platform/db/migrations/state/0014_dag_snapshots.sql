-- Whole-snapshot DAG jobs (SPEC §19 "Whole-snapshot jobs", "Cron"; invariant 22): a job with
-- `window: all` is recomputed over its inputs' pinned snapshots, on upstream change or once
-- per cron slot; each run is one row of state.dag_ranges (its task id derived from the job,
-- its generation and the slot or run number) and replaces the output as a new commit.

CREATE TABLE state.dag_snapshot_jobs (
    job_uuid             uuid PRIMARY KEY REFERENCES state.dag_jobs (job_uuid) ON DELETE CASCADE,
    schedule             text NULL,          -- UTC cron; NULL: refreshed on upstream change
    min_interval_seconds double precision NOT NULL CHECK (min_interval_seconds >= 0),
    last_slot            timestamptz NULL,   -- the last slot planned, or when the schedule began
    missed_slots         bigint NOT NULL DEFAULT 0,  -- slots skipped after downtime, in total
    last_missed          bigint NOT NULL DEFAULT 0,  -- ... skipped before the last slot planned
    runs                 bigint NOT NULL DEFAULT 0,  -- runs planned (names a run off schedule)
    planned_at           timestamptz NULL,   -- when the last run was planned
    input_marks          jsonb NULL,         -- its inputs' versions then ({dataset: version})
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The cron slot a run was planned for (NULL: a run on upstream change).
ALTER TABLE state.dag_ranges ADD COLUMN slot timestamptz NULL;
