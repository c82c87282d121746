-- One tenant's dedupe keys can never suppress another tenant's events (SPEC §2, §12): the
-- key is unique per org. Existing rows keep their place (unique keys are unique per org too).
ALTER TABLE data.alert_events DROP CONSTRAINT alert_events_pkey;
ALTER TABLE data.alert_events ADD CONSTRAINT alert_events_pkey PRIMARY KEY (org_id, dedupe_key);
