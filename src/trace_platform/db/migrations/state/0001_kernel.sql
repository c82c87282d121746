-- Kernel control plane: tasks, outbox, Postgres queue, task events.
CREATE SCHEMA IF NOT EXISTS state;

CREATE TABLE state.tasks (
    task_id          uuid PRIMARY KEY,
    org_id           uuid NOT NULL,
    attempt          int NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'canceled')),
    lease_token      uuid NULL,
    lease_expires_at timestamptz NULL,
    worker_id        text NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    max_attempts     int NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    next_retry_at    timestamptz NULL,
    last_outcome     text NULL,      -- success | retryable_error | fatal_error | timeout
    last_error       text NULL,
    outputs          jsonb NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Lease reaper and retry scheduler scan only the rows they act on.
CREATE INDEX tasks_running_lease_idx ON state.tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_retry_due_idx ON state.tasks (next_retry_at)
    WHERE status = 'failed' AND next_retry_at IS NOT NULL;

CREATE TABLE state.outbox (
    outbox_id    uuid PRIMARY KEY,
    topic        text NOT NULL,
    payload      jsonb NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     int NOT NULL DEFAULT 0,
    last_error   text NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_pending_idx ON state.outbox (available_at) WHERE status = 'pending';
CREATE INDEX outbox_sent_idx ON state.outbox (updated_at) WHERE status = 'sent';

CREATE TABLE state.queue_messages (
    message_id      uuid PRIMARY KEY,
    queue_name      text NOT NULL,
    payload         jsonb NOT NULL,
    available_at    timestamptz NOT NULL DEFAULT now(),
    invisible_until timestamptz NULL,
    deliveries      int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- A message is visible once both its availability and its invisibility have passed.
CREATE INDEX queue_messages_visible_idx ON state.queue_messages
    (queue_name, (greatest(available_at, coalesce(invisible_until, available_at))));

CREATE TABLE state.task_events (
    event_key  text PRIMARY KEY,   -- task_id:attempt:sha256(event) — a retried request adds nothing
    task_id    uuid NOT NULL,
    attempt    int NOT NULL,
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task_idx ON state.task_events (task_id, attempt);

-- Deterministic outbox id of the wake-up for (task, attempt): creating a task or starting a
-- retry twice adds no second wake-up.
CREATE FUNCTION state.wakeup_outbox_id(task uuid, attempt int) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT md5(task::text || ':' || attempt::text || ':wakeup')::uuid $$;

-- lambda-runtime tasks are invoked by the dispatcher; everything else wakes a worker.
CREATE FUNCTION state.wakeup_topic(payload jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN payload->>'runtime' = 'lambda' THEN 'invoke_udf' ELSE 'enqueue_task' END $$;
