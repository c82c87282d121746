-- RPC pool endpoints as each process sees them (SPEC §16): one row per (pool, endpoint
-- label, reporting process), replaced by every report, so counters are that process's own
-- totals and status sums them. Labels only: a URL (it may carry a key) is never stored.
CREATE TABLE state.rpc_endpoints (
    pool        text NOT NULL,
    endpoint    text NOT NULL,
    process     text NOT NULL,
    view        jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, endpoint, process)
);

-- A stream without max_inflight in its spec takes the planner's default, derived from its
-- pool (NULL here).
ALTER TABLE state.chain_streams ALTER COLUMN max_inflight DROP NOT NULL;
