"""Webhook delivery (SPEC §12): leased delivery rows, Standard Webhooks signing, retries with
backoff, and an SSRF guard on every request."""
