-- Queries of users through POST /v1/query are audited per user (SPEC §13): the SQL hash
-- only, as for tasks. A row names a task or a user.
ALTER TABLE data.query_audit ALTER COLUMN task_id DROP NOT NULL;
ALTER TABLE data.query_audit ADD COLUMN user_id uuid NULL;
