-- Webhook deliveries (SPEC §12): one row per (event, channel), created by the sink in the
-- transaction that inserts the event; leased by `trace deliver` with FOR UPDATE SKIP LOCKED.
CREATE TABLE data.alert_deliveries (
    delivery_id         uuid PRIMARY KEY,   -- the webhook-id / Idempotency-Key: md5(org:key:channel)
    org_id              uuid NOT NULL,
    dedupe_key          text NOT NULL,
    alert_definition_id uuid NOT NULL,
    channel             smallint NOT NULL CHECK (channel >= 0),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),  -- also the lease of a claimed one
    last_status_code    integer NULL,
    last_error          text NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, dedupe_key, channel)
);
CREATE INDEX alert_deliveries_due_idx ON data.alert_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX alert_deliveries_alert_idx ON data.alert_deliveries
    (org_id, alert_definition_id, created_at);

-- Every attempt of a delivery: what the receiver answered, or why nothing was sent.
CREATE TABLE data.delivery_attempts (
    delivery_id  uuid NOT NULL,
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  integer NOT NULL,
    status_code  integer NULL,
    outcome      text NOT NULL,             -- delivered | retry | failed
    error        text NULL,
    PRIMARY KEY (delivery_id, attempt)
);
