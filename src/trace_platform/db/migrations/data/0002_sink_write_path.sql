-- The sink's insert is the hot path of the data DB: keep only the indexes that serve reads
-- (dedupe_key PK, org/time). Rows of one producer are found through the state DB's outbox.
DROP INDEX IF EXISTS data.alert_events_producer_idx;
