"""Database access: pools, named SQL, migrations and the embedded Lite server."""
