"""Pure domain logic: no I/O, imports nothing else of ours but errors."""
