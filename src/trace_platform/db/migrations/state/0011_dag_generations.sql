-- DAG generations (SPEC §19, invariant 21): a changed job is built as a new row of
-- dag_jobs with its own output dataset, hidden from the catalog, beside the current one;
-- when every building job covers what the current one covered, one transaction swaps the
-- catalog names of all of them. A DAG generation is the set of job rows it reads as.

-- `role`: current (its output is `{dag}.{job}` in the catalog), building (hidden, planned,
-- becomes current at the cut-over) or retired (hidden, not planned, kept for a rollback
-- until its generation is purged). One current row per job name.
ALTER TABLE state.dag_jobs ADD COLUMN role text NOT NULL DEFAULT 'current'
    CHECK (role IN ('current', 'building', 'retired'));
ALTER TABLE state.dag_jobs DROP CONSTRAINT dag_jobs_dag_id_name_key;
CREATE UNIQUE INDEX dag_jobs_current_idx ON state.dag_jobs (dag_id, name) WHERE role = 'current';
CREATE UNIQUE INDEX dag_jobs_generation_idx ON state.dag_jobs (dag_id, name, generation);

-- The DAG's current generation and the one being built (none when NULL).
ALTER TABLE state.dags ADD COLUMN generation int NOT NULL DEFAULT 1;
ALTER TABLE state.dags ADD COLUMN building_generation int NULL;

-- Each generation of a DAG: the spec it was applied from and its job rows by name.
CREATE TABLE state.dag_generations (
    dag_id     uuid NOT NULL REFERENCES state.dags (dag_id) ON DELETE CASCADE,
    generation int NOT NULL CHECK (generation >= 1),
    state      text NOT NULL CHECK (state IN ('building', 'current', 'retired', 'abandoned',
                                              'purged')),
    spec       jsonb NOT NULL,
    sha256     text NOT NULL,
    jobs       jsonb NOT NULL,              -- {job name: job_uuid}
    created_at timestamptz NOT NULL DEFAULT now(),
    current_at timestamptz NULL,            -- when it last became current
    PRIMARY KEY (dag_id, generation)
);

-- DAGs applied before generations: their jobs are generation 1.
INSERT INTO state.dag_generations (dag_id, generation, state, spec, sha256, jobs, current_at)
SELECT d.dag_id, 1, 'current', coalesce(s.body, '{}'::jsonb), coalesce(s.sha256, ''),
       coalesce((SELECT jsonb_object_agg(j.name, j.job_uuid) FROM state.dag_jobs j
                 WHERE j.dag_id = d.dag_id AND j.status <> 'removed'), '{}'::jsonb),
       now()
FROM state.dags d
LEFT JOIN state.specs s ON s.org_id = d.org_id AND s.kind = 'dag' AND s.name = d.name;

-- A cut-over checks that no partition of a building output left readers' snapshots since
-- its coverage was read.
CREATE INDEX dataset_partitions_removed_idx ON state.dataset_partitions (dataset_uuid, removed_at)
    WHERE removed_seq IS NOT NULL;
