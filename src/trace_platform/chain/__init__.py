"""Chain sync (SPEC §11): a chain into versioned Parquet datasets that follow the head.

`spec` validates `kind: chain_sync` files; `planner` schedules ranges and watches the head
(dispatcher loops); `ingest` is the `cryo_ingest` worker operator; `commit` registers a range
on the fenced successful completion; `reorg` repairs ranges the node no longer agrees with;
`compaction` merges old partitions. SQL lives in `db/sql/chain.sql`.
"""
