"""The query service: token-gated, SQL-gated DuckDB over datasets granted in the token."""
