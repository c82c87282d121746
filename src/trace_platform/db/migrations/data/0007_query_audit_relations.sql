-- A query may read several relations (SPEC §15): every dataset it read is recorded;
-- dataset_id keeps the first (the one read as `dataset` where there is one).
ALTER TABLE data.query_audit ADD COLUMN dataset_ids uuid[] NULL;
