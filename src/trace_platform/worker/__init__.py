"""The worker: polls wake-ups, claims, runs a platform operator, publishes its batch, completes."""
