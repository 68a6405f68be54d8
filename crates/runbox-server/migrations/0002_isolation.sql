-- Issue 5: each sandbox records the backend it runs on and the isolation in force (JSON:
-- backend, enforcement report, limits, requested backend and any fallback), so
-- GET /v1/sandboxes/{id}/isolation answers after the sandbox has ended too.
ALTER TABLE sandboxes ADD COLUMN backend TEXT NOT NULL DEFAULT 'native';
ALTER TABLE sandboxes ADD COLUMN isolation TEXT NOT NULL DEFAULT '{}';
