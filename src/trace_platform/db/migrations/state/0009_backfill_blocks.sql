-- While a stream is far behind, its ranges are `backfill_blocks` long (a multiple of its
-- chunk size; NULL: the planner's default, the largest multiple of the chunk size up to
-- 1,000 blocks, cryo's own chunk). Near the head they are chunk-sized again.
ALTER TABLE state.chain_streams ADD COLUMN backfill_blocks integer;
