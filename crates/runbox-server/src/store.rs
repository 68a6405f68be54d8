//! SQLite, embedded, one file in the data dir: sandbox records and the audit log. Schema
//! migrations live in `migrations/` and are applied in order at start (PRAGMA user_version).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_isolation.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create the data directory {0}")]
    DataDir(String, #[source] std::io::Error),
}

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// A sandbox row.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxRow {
    pub id: String,
    pub tenant: String,
    pub state: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub memory_bytes: u64,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
    /// `native`, `docker` or `gvisor`.
    pub backend: String,
    /// The isolation report (`GET /v1/sandboxes/{id}/isolation`).
    pub isolation: serde_json::Value,
}

/// An audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: String,
    pub at: String,
    pub tenant: String,
    pub sandbox: Option<String>,
    pub kind: String,
    pub detail: serde_json::Value,
    pub outcome: String,
    pub error: Option<String>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<f64>,
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub tenant: String,
    pub sandbox: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

fn row_to_sandbox(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRow> {
    let entrypoint: String = r.get("entrypoint")?;
    let metadata: String = r.get("metadata")?;
    Ok(SandboxRow {
        id: r.get("id")?,
        tenant: r.get("tenant")?,
        state: r.get("state")?,
        reason: r.get("reason")?,
        message: r.get("message")?,
        image: r.get("image")?,
        entrypoint: serde_json::from_str(&entrypoint).unwrap_or_default(),
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        memory_bytes: r.get::<_, i64>("memory_bytes")? as u64,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        expires_at: r.get("expires_at")?,
        backend: r.get("backend")?,
        isolation: serde_json::from_str(&r.get::<_, String>("isolation")?).unwrap_or_default(),
    })
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::DataDir(data_dir.display().to_string(), e))?;
        let conn = Connection::open(data_dir.join("runbox.db"))?;
        // WAL: readers don't block the writer; synchronous=NORMAL is durable across crashes of
        // the process (the WAL is fsynced at checkpoints), which is what we need.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // One writer migrates at a time: the version is read and bumped inside the same
        // immediate transaction, so two processes opening a fresh database cannot both apply.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let migrated = (|| -> Result<(), rusqlite::Error> {
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                conn.execute_batch(sql)?;
                conn.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            Ok(())
        })();
        match migrated {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_sandbox(&self, s: &SandboxRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sandboxes (id, tenant, state, reason, message, image, entrypoint, metadata, memory_bytes, created_at, updated_at, expires_at, backend, isolation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                s.id, s.tenant, s.state, s.reason, s.message, s.image,
                serde_json::to_string(&s.entrypoint).unwrap_or_default(),
                serde_json::to_string(&s.metadata).unwrap_or_default(),
                s.memory_bytes as i64, s.created_at, s.updated_at, s.expires_at,
                s.backend, s.isolation.to_string()
            ],
        )?;
        Ok(())
    }

    pub fn set_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        message: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET state = ?2, reason = ?3, message = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, state, reason, message, now],
        )?;
        Ok(())
    }

    pub fn set_metadata(
        &self,
        id: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET metadata = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, serde_json::to_string(metadata).unwrap_or_default(), now],
        )?;
        Ok(())
    }

    pub fn set_expiry(
        &self,
        id: &str,
        expires_at: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET expires_at = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, expires_at, now],
        )?;
        Ok(())
    }

    pub fn sandbox(&self, tenant: &str, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT * FROM sandboxes WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                row_to_sandbox,
            )
            .optional()?)
    }

    /// All of a tenant's sandboxes, newest first.
    pub fn sandboxes(&self, tenant: &str) -> Result<Vec<SandboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT * FROM sandboxes WHERE tenant = ?1 ORDER BY created_at DESC, id")?;
        let rows = stmt
            .query_map(params![tenant], row_to_sandbox)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Sandboxes recorded as alive (used at start to reconcile after a crash).
    pub fn live_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM sandboxes WHERE state IN ('Pending', 'Running', 'Paused', 'Pausing', 'Resuming', 'Stopping')")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    pub fn audit(&self, r: &AuditRecord, at_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (id, at, at_ms, tenant, sandbox, kind, detail, outcome, error, exit_code, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![r.id, r.at, at_ms, r.tenant, r.sandbox, r.kind, r.detail.to_string(), r.outcome, r.error, r.exit_code, r.duration_ms],
        )?;
        Ok(())
    }

    pub fn audit_query(&self, f: &AuditFilter) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let conn = self.conn();
        let where_sql = "tenant = ?1 AND (?2 IS NULL OR sandbox = ?2) AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms <= ?5)";
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM audit WHERE {where_sql}"),
            params![f.tenant, f.sandbox, f.kind, f.since_ms, f.until_ms],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM audit WHERE {where_sql} ORDER BY at_ms DESC, id LIMIT ?6 OFFSET ?7"
        ))?;
        let rows = stmt
            .query_map(
                params![f.tenant, f.sandbox, f.kind, f.since_ms, f.until_ms, f.limit, f.offset],
                row_to_audit,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, total as u64))
    }

    pub fn audit_record(&self, tenant: &str, id: &str) -> Result<Option<AuditRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT * FROM audit WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                row_to_audit,
            )
            .optional()?)
    }

    /// Drops audit records older than `cutoff_ms`.
    pub fn prune_audit(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM audit WHERE at_ms < ?1", params![cutoff_ms])?)
    }
}

fn row_to_audit(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let detail: String = r.get("detail")?;
    Ok(AuditRecord {
        id: r.get("id")?,
        at: r.get("at")?,
        tenant: r.get("tenant")?,
        sandbox: r.get("sandbox")?,
        kind: r.get("kind")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        outcome: r.get("outcome")?,
        error: r.get("error")?,
        exit_code: r.get("exit_code")?,
        duration_ms: r.get("duration_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> Store {
        let mut b = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
        let name = format!(
            "runbox-store-{}-{}",
            std::process::id(),
            u64::from_ne_bytes(b)
        );
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        Store::open(&dir).expect("opens")
    }

    fn row(id: &str, tenant: &str) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            tenant: tenant.into(),
            state: "Running".into(),
            reason: None,
            message: None,
            image: "default".into(),
            entrypoint: vec!["tail".into()],
            metadata: serde_json::Map::new(),
            memory_bytes: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            backend: "native".into(),
            isolation: serde_json::json!({}),
        }
    }

    #[test]
    fn sandboxes_are_tenant_scoped_and_migrations_are_idempotent() {
        let s = temp_store();
        s.insert_sandbox(&row("a", "t1")).expect("insert");
        assert!(s.sandbox("t1", "a").expect("query").is_some());
        assert!(s.sandbox("t2", "a").expect("query").is_none());
        assert_eq!(s.live_ids().expect("live"), vec!["a".to_owned()]);
    }

    #[test]
    fn audit_filters_and_pages() {
        let s = temp_store();
        for i in 0..5 {
            let r = AuditRecord {
                id: format!("e{i}"),
                at: "x".into(),
                tenant: "t".into(),
                sandbox: Some("sb".into()),
                kind: if i % 2 == 0 {
                    "command".into()
                } else {
                    "code".into()
                },
                detail: serde_json::json!({"i": i}),
                outcome: "ok".into(),
                error: None,
                exit_code: Some(0),
                duration_ms: Some(1.0),
            };
            s.audit(&r, 1000 + i).expect("audit");
        }
        let f = AuditFilter {
            tenant: "t".into(),
            kind: Some("command".into()),
            limit: 2,
            ..Default::default()
        };
        let (rows, total) = s.audit_query(&f).expect("query");
        assert_eq!(total, 3);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "e4");
        let other = AuditFilter {
            tenant: "other".into(),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(s.audit_query(&other).expect("query").1, 0);
        assert_eq!(s.prune_audit(1002).expect("prune"), 2);
    }
}
