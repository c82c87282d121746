-- Decoded contract events (SPEC §15). A decoded table is a stream of its job whose ranges
-- are decoded from the job's committed raw `logs` partitions (cryo_dataset = 'decode'); its
-- event, addresses or factory are in `decode`.
ALTER TABLE state.chain_streams ADD COLUMN decode jsonb NULL;

-- Children of factories: each address a parent event created, from the decoded partition
-- that holds that event (a partition a reorg removed no longer counts).
CREATE TABLE state.chain_children (
    job_id        uuid NOT NULL,
    contract      text NOT NULL,
    address       text NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    block_number  bigint NOT NULL,
    log_index     int NOT NULL,
    partition_id  uuid NOT NULL REFERENCES state.dataset_partitions (partition_id),
    PRIMARY KEY (partition_id, log_index, address)
);
CREATE INDEX chain_children_job_idx ON state.chain_children (job_id, contract, block_number);
