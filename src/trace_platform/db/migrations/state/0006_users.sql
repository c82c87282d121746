-- Users of the /v1 API and the console (SPEC §13): an API key per user, stored as its
-- sha256 only (keys are 256-bit random: a fast hash is safe and keeps lookups O(1)).
CREATE TABLE state.users (
    user_id      uuid PRIMARY KEY,
    org_id       uuid NOT NULL,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$'),
    role         text NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    key_hash     text NOT NULL UNIQUE,
    key_prefix   text NOT NULL,              -- the first characters, to recognise a key
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz NULL,
    UNIQUE (org_id, name)
);

-- The task list of the API and the console: keyset pagination per org, newest first, with
-- or without a status filter, at any depth.
CREATE INDEX tasks_org_created_idx ON state.tasks (org_id, created_at DESC, task_id DESC);
CREATE INDEX tasks_org_status_created_idx
    ON state.tasks (org_id, status, created_at DESC, task_id DESC);
