"""Alerts (SPEC §12): `kind: alert` specs, evaluation of every newly committed range of the
source dataset with a SQL rule (through the query service's gate and sandbox, granted that
range only), and `alert_events` with dedupe keys derived from (alert, identity, block hash).
Delivery to webhooks is not built yet."""
