-- Users and API keys (SPEC §13).

-- name: insert_user
INSERT INTO state.users (user_id, org_id, name, role, key_hash, key_prefix)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING user_id, org_id, name, role, key_prefix, created_at;

-- name: list_users
SELECT user_id, name, role, key_prefix, created_at, revoked_at FROM state.users
WHERE org_id = $1 ORDER BY name;

-- name: revoke_user
UPDATE state.users SET revoked_at = now()
WHERE org_id = $1 AND name = $2 AND revoked_at IS NULL
RETURNING user_id, name, revoked_at;

-- name: user_by_key
-- One index lookup per request: a revoked key stops working at once.
SELECT user_id, org_id, name, role FROM state.users WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: user_by_id
SELECT user_id, org_id, name, role FROM state.users WHERE user_id = $1 AND revoked_at IS NULL;
