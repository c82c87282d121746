"""The sink: validates buffer batches and upserts them idempotently into the data DB."""
