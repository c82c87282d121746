-- Saved queries (SPEC §21): named, org-scoped SQL with typed parameters.

-- name: insert_saved_query
INSERT INTO state.saved_queries
    (query_id, org_id, name, sql, description, job, parameters, created_by, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $8)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING *;

-- name: update_saved_query
UPDATE state.saved_queries
SET sql = $3, description = $4, job = $5, parameters = $6::jsonb, updated_by = $7,
    updated_at = now()
WHERE org_id = $1 AND name = $2
RETURNING *;

-- name: list_saved_queries
SELECT query_id, name, description, job, parameters, created_at, updated_at
FROM state.saved_queries WHERE org_id = $1 ORDER BY name;

-- name: saved_query_by_name
SELECT * FROM state.saved_queries WHERE org_id = $1 AND name = $2;

-- name: delete_saved_query
DELETE FROM state.saved_queries WHERE org_id = $1 AND name = $2 RETURNING query_id, name;
