"""The dispatcher: HTTP API over the state DB, token minting, and the kernel's background loops."""
