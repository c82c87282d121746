-- Every query path writes an audit row (SPEC §9, §13): a task's, a user's through the API
-- or console, or an operator's at this installation's CLI. `source` names the path.
ALTER TABLE data.query_audit ADD COLUMN source text NOT NULL DEFAULT 'task'
    CHECK (source IN ('task', 'api', 'cli'));
UPDATE data.query_audit SET source = 'api' WHERE user_id IS NOT NULL;
