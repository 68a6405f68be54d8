-- Sandboxes the server created, and what happened to them.
CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT,
    message      TEXT,
    image        TEXT NOT NULL,
    entrypoint   TEXT NOT NULL,  -- JSON array
    metadata     TEXT NOT NULL,  -- JSON object
    memory_bytes INTEGER NOT NULL,
    created_at   TEXT NOT NULL,  -- RFC 3339
    updated_at   TEXT NOT NULL,
    expires_at   TEXT
);
CREATE INDEX sandboxes_tenant ON sandboxes (tenant, state);

-- Everything that ran or changed: lifecycle actions, commands, code, file writes.
CREATE TABLE audit (
    id          TEXT PRIMARY KEY,
    at          TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    tenant      TEXT NOT NULL,
    sandbox     TEXT,
    kind        TEXT NOT NULL,   -- sandbox.create, command, code, file.write, ...
    detail      TEXT NOT NULL,   -- JSON: what was run (code text capped), paths, ...
    outcome     TEXT NOT NULL,   -- ok | error | ...
    error       TEXT,
    exit_code   INTEGER,
    duration_ms REAL
);
CREATE INDEX audit_tenant_time ON audit (tenant, at_ms);
CREATE INDEX audit_sandbox ON audit (sandbox, at_ms);
