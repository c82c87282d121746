"""The UDF runner (untrusted side): holds only the attempt's capability token, runs a bundle's
handler in a sandbox, and reports through the task-scoped endpoints."""
