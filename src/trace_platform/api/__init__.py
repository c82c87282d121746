"""The user API (`/v1/*`) and the web console (`/ui`) of `trace api` (SPEC §13)."""
