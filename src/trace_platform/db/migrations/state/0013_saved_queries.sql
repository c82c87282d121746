-- Saved queries (SPEC §21): the only place Trace stores SQL text. Named per org; `parameters`
-- are the typed `{{ name: TYPE }}` placeholders of `sql` as parsed when it was saved
-- ([{name, type, default}]), bound as values when the query runs, never spliced into it.
CREATE TABLE state.saved_queries (
    query_id    uuid PRIMARY KEY,
    org_id      uuid NOT NULL,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    sql         text NOT NULL CHECK (length(sql) BETWEEN 1 AND 20000),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    job         text NULL,                  -- the chain job whose relations answer to short names
    parameters  jsonb NOT NULL DEFAULT '[]',
    created_by  uuid NULL,                  -- the user who saved it (NULL: an operator's CLI)
    updated_by  uuid NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);
