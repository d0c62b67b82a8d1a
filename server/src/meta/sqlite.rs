//! The metadata in SQLite: one connection per process, in WAL mode with a busy timeout,
//! so admin commands can run while `serve` holds the same data dir. The schema is
//! migrated by `PRAGMA user_version`.
//!
//! Every change is one transaction through [`SqliteMeta::write`], and two rules hold for
//! all of them:
//! - **It begins IMMEDIATE**: it takes the write lock before it reads, so the busy
//!   timeout can wait out another process's commit. A deferred transaction that read
//!   first fails at once with "database is locked" (`SQLITE_BUSY_SNAPSHOT`) when another
//!   connection committed in between.
//! - **It is durable when it returns** (`synchronous = FULL`: the WAL is fsynced at each
//!   commit, never left to the page cache). Linux reports a failed writeback once, to the
//!   next fsync, and marks the lost pages clean; a commit that skipped its fsync could
//!   therefore be lost behind a hole in the WAL while a later commit's fsync succeeds.
//!   After any I/O error, no further change is made until a `wal_checkpoint(TRUNCATE)`
//!   has copied every committed frame into the database file, fsynced it and emptied the
//!   WAL: durability proven again, with a fresh WAL behind the next commit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use hotate_engine::{Entry, Hash, Offer};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};

use super::{
    Accounts, Catalog, Cluster, DiskRow, JobReport, LockedMeta, MetaError, Role, Session,
    TransferRow, UpdateQuery, UpdateRow, UpdateState, Updates, Upkeep, UploadReport, UserRow,
    VersionRow, now,
};

/// Schema migrations, applied in order; the index + 1 is the `user_version` after each.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    token_hash BLOB PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    terminal TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE disks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    disk_id TEXT NOT NULL REFERENCES disks(id),
    id TEXT NOT NULL,
    parent TEXT,
    comment TEXT NOT NULL,
    user TEXT NOT NULL,
    terminal TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    root BLOB NOT NULL,
    blocks_changed INTEGER NOT NULL,
    bytes_stored INTEGER NOT NULL,
    UNIQUE (disk_id, id)
);
CREATE TABLE updates (
    guid TEXT PRIMARY KEY,
    disk_id TEXT NOT NULL REFERENCES disks(id),
    base_version TEXT NOT NULL,
    terminal TEXT NOT NULL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    new_version TEXT,
    chunks_received INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX one_live_update_per_disk ON updates(disk_id)
    WHERE state IN ('reserved', 'uploading');
CREATE TABLE upload_entries (
    guid TEXT NOT NULL REFERENCES updates(guid),
    block_index INTEGER NOT NULL,
    hash BLOB,
    PRIMARY KEY (guid, block_index)
) WITHOUT ROWID;
",
    r"
-- Each opened upload stream is a session of its update. Entries keep the session that
-- last offered them: finish uses the current session's, and store gc keeps the chunks
-- of every session of a live update, so a resumed upload never loses what it sent.
ALTER TABLE updates ADD COLUMN session INTEGER NOT NULL DEFAULT 0;
ALTER TABLE upload_entries ADD COLUMN session INTEGER NOT NULL DEFAULT 0;
CREATE INDEX upload_entries_by_hash ON upload_entries(hash);
",
    r"
-- Roles: operators start, finish and cancel their own updates and read disks; admins
-- may also abort and manage. Users of earlier data dirs keep every right they had.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
-- Tokens go with their user.
CREATE INDEX tokens_by_user ON tokens(user);
",
    r"
-- The last run of each store upkeep command (verify, gc), for the console.
CREATE TABLE upkeep_runs (
    kind TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
",
    r"
-- The hash of the secret that lets a live update's terminal cancel it without a login;
-- cleared when the update ends.
ALTER TABLE updates ADD COLUMN cancel_secret_hash BLOB;
",
    r"
-- Several processes on one database: the transfer servers, the one each upload was
-- handed to, and the leases that keep gc from what imports write.
CREATE TABLE transfer_servers (
    url TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    uploads INTEGER NOT NULL
);
ALTER TABLE updates ADD COLUMN carrier TEXT;
CREATE TABLE store_leases (
    holder TEXT PRIMARY KEY,
    exclusive INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
-- What each transfer server's open upload streams have done, for the consoles.
CREATE TABLE upload_reports (
    guid TEXT PRIMARY KEY,
    transfer TEXT NOT NULL,
    session INTEGER NOT NULL,
    needed INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    on_wire INTEGER NOT NULL,
    at INTEGER NOT NULL
);
",
    r"
-- Who last cancelled an update or aborted its upload, for the history.
ALTER TABLE updates ADD COLUMN stopped_by TEXT;
-- The terminal's own account of its whole finish (JSON), for the consoles.
ALTER TABLE upload_reports ADD COLUMN job TEXT;
",
];

/// The metadata database in SQLite.
#[derive(Debug)]
pub struct SqliteMeta {
    conn: Mutex<Connection>,
    /// A write failed with an I/O error: what the database holds is not proven durable
    /// until a checkpoint succeeds.
    unproven: AtomicBool,
}

impl SqliteMeta {
    /// Opens (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let meta = Self {
            conn: Mutex::new(conn),
            unproven: AtomicBool::new(false),
        };
        meta.migrate()?;
        Ok(meta)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` in one IMMEDIATE transaction and commits it durably (see the module's
    /// rules). Nothing is changed when `work` fails.
    fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let mut conn = self.conn();
        self.prove_durable(&conn)?;
        let done = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(MetaError::from)
            .and_then(|tx| {
                let out = work(&tx)?;
                tx.commit()?;
                Ok(out)
            });
        match done {
            Err(MetaError::Backend(e)) if e.downcast_ref().is_some_and(is_io_failure) => {
                tracing::error!(
                    "a metadata write failed ({e}); nothing more is recorded until a \
                     checkpoint proves the database durable"
                );
                self.unproven.store(true, Ordering::SeqCst);
                Err(MetaError::DiskFailed(e.to_string()))
            }
            done => done,
        }
    }

    /// After an I/O error, copies every committed WAL frame into the
    /// database file, fsyncs it and empties the WAL; refuses to go on until that works.
    fn prove_durable(&self, conn: &Connection) -> Result<(), MetaError> {
        if !self.unproven.load(Ordering::SeqCst) {
            return Ok(());
        }
        // (busy, WAL frames, frames checkpointed): busy is 1 when readers or another
        // writer kept the checkpoint from finishing within the busy timeout.
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| MetaError::Unproven(e.to_string()))?;
        if busy != 0 {
            return Err(MetaError::Unproven(
                "the checkpoint was kept waiting by other connections".into(),
            ));
        }
        if self.unproven.swap(false, Ordering::SeqCst) {
            tracing::debug!("metadata checkpointed: every committed change is durable");
        }
        Ok(())
    }

    fn migrate(&self) -> Result<(), MetaError> {
        self.write(|tx| {
            let current: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if current > MIGRATIONS.len() {
                return Err(MetaError::Damaged(format!(
                    "the data dir was written by a newer Hotate (schema {current})"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i + 1)?;
            }
            Ok(())
        })
    }
}

/// Whether an error says the disk failed (as opposed to a refusal or a busy lock).
// The cause is part of the message, so it is not also reported as a source: `{:#}`
// would print it twice.
impl From<rusqlite::Error> for MetaError {
    fn from(cause: rusqlite::Error) -> Self {
        Self::Backend(Box::new(cause))
    }
}

fn is_io_failure(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::NotADatabase
        )
    )
}

impl Accounts for SqliteMeta {
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Option<Role>,
    ) -> Result<Role, MetaError> {
        self.write(|tx| {
            let users: i64 = tx.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            let role = role.unwrap_or(if users == 0 {
                Role::Admin
            } else {
                Role::Operator
            });
            let added = tx.execute(
                "INSERT INTO users (name, password_hash, created_at, role) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO NOTHING",
                params![name, password_hash, now(), role.as_str()],
            )?;
            if added == 0 {
                return Err(MetaError::UserExists(name.to_owned()));
            }
            Ok(role)
        })
    }

    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                params![name, password_hash],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            tx.execute("DELETE FROM tokens WHERE user = ?1", [name])?;
            Ok(())
        })
    }

    fn set_role(&self, name: &str, role: Role) -> Result<(), MetaError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET role = ?2 WHERE name = ?1",
                params![name, role.as_str()],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            Ok(())
        })
    }

    fn delete_user(&self, name: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE user = ?1", [name])?;
            if tx.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            Ok(())
        })
    }

    fn users(&self) -> Result<Vec<UserRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, role, created_at FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, created_at) = row?;
            out.push(UserRow {
                name,
                role: Role::parse(&role).unwrap_or(Role::Operator),
                created_at,
            });
        }
        Ok(out)
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>, MetaError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn add_token(
        &self,
        token_hash: &Hash,
        session: &Session,
        expires_at: i64,
    ) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE expires_at < ?1", params![now()])?;
            tx.execute(
                "INSERT INTO tokens (token_hash, user, terminal, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    &token_hash.as_bytes()[..],
                    session.user,
                    session.terminal,
                    expires_at
                ],
            )?;
            Ok(())
        })
    }

    fn remove_token(&self, token_hash: &Hash) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM tokens WHERE token_hash = ?1",
                params![&token_hash.as_bytes()[..]],
            )?;
            Ok(())
        })
    }

    fn session(&self, token_hash: &Hash) -> Result<Option<Session>, MetaError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT t.user, t.terminal, u.role FROM tokens t JOIN users u ON u.name = t.user
                 WHERE t.token_hash = ?1 AND t.expires_at >= ?2",
                params![&token_hash.as_bytes()[..], now()],
                |r| {
                    Ok(Session {
                        user: r.get(0)?,
                        terminal: r.get(1)?,
                        role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Operator),
                    })
                },
            )
            .optional()?)
    }

    fn role(&self, name: &str) -> Result<Option<Role>, MetaError> {
        let role: Option<String> = self
            .conn()
            .query_row("SELECT role FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(role.map(|r| Role::parse(&r).unwrap_or(Role::Operator)))
    }
}

impl Catalog for SqliteMeta {
    fn disk(&self, id_or_name: &str) -> Result<DiskRow, MetaError> {
        self.conn()
            .query_row(
                "SELECT id, name, size, block_size, created_at FROM disks
                 WHERE id = ?1 OR name = ?1",
                [id_or_name],
                disk_row,
            )
            .optional()?
            .ok_or_else(|| MetaError::UnknownDisk(id_or_name.to_owned()))
    }

    fn disks(&self) -> Result<Vec<DiskRow>, MetaError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, size, block_size, created_at FROM disks ORDER BY name")?;
        let rows = stmt.query_map([], disk_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_disk(&self, disk: &DiskRow, first: &VersionRow) -> Result<(), MetaError> {
        self.write(|tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM disks WHERE name = ?1", [&disk.name], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(MetaError::DiskExists(disk.name.clone()));
            }
            tx.execute(
                "INSERT INTO disks (id, name, size, block_size, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![disk.id, disk.name, disk.size as i64, disk.block_size, disk.created_at],
            )?;
            insert_version(tx, first)
        })
    }

    fn versions(&self, disk_id: &str) -> Result<Vec<VersionRow>, MetaError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("{VERSION_SELECT} WHERE disk_id = ?1 ORDER BY seq"))?;
        let rows = stmt.query_map([disk_id], version_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_version(&self, version: &VersionRow) -> Result<bool, MetaError> {
        self.write(|tx| {
            let disk = &version.disk_id;
            if tx
                .query_row("SELECT 1 FROM disks WHERE id = ?1", [disk], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Err(MetaError::UnknownDisk(disk.clone()));
            }
            if version_exists(tx, disk, &version.id)? {
                return Ok(false);
            }
            insert_version(tx, version)?;
            Ok(true)
        })
    }

    fn latest_version(&self, disk_id: &str) -> Result<VersionRow, MetaError> {
        self.conn()
            .query_row(
                &format!("{VERSION_SELECT} WHERE disk_id = ?1 ORDER BY seq DESC LIMIT 1"),
                [disk_id],
                version_row,
            )
            .optional()?
            .ok_or_else(|| MetaError::Damaged(format!("disk {disk_id} has no version")))
    }

    fn version(&self, disk_id: &str, id: &str) -> Result<VersionRow, MetaError> {
        self.conn()
            .query_row(
                &format!("{VERSION_SELECT} WHERE disk_id = ?1 AND id = ?2"),
                [disk_id, id],
                version_row,
            )
            .optional()?
            .ok_or_else(|| MetaError::UnknownVersion(id.to_owned()))
    }

    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError> {
        version_exists(&self.conn(), disk_id, id)
    }

    fn delete_disk(&self, disk_id: &str) -> Result<usize, MetaError> {
        self.write(|tx| {
            if let Some(live) = live_update(tx, disk_id)? {
                return Err(MetaError::DiskBusy {
                    terminal: live.terminal,
                });
            }
            tx.execute(
                "DELETE FROM upload_entries WHERE guid IN (SELECT guid FROM updates WHERE disk_id = ?1)",
                [disk_id],
            )?;
            tx.execute("DELETE FROM updates WHERE disk_id = ?1", [disk_id])?;
            let versions = tx.execute("DELETE FROM versions WHERE disk_id = ?1", [disk_id])?;
            tx.execute("DELETE FROM disks WHERE id = ?1", [disk_id])?;
            Ok(versions)
        })
    }

    fn delete_version(&self, disk_id: &str, id: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            let latest = latest_id(tx, disk_id)?;
            if latest == id {
                return Err(MetaError::VersionIsLatest(id.to_owned()));
            }
            if let Some(live) = live_update(tx, disk_id)?
                && live.base_version == id
            {
                return Err(MetaError::VersionIsBase {
                    version: id.to_owned(),
                    terminal: live.terminal,
                });
            }
            let deleted = tx.execute(
                "DELETE FROM versions WHERE disk_id = ?1 AND id = ?2",
                [disk_id, id],
            )?;
            if deleted == 0 {
                return Err(MetaError::UnknownVersion(id.to_owned()));
            }
            Ok(())
        })
    }

    fn set_comment(&self, disk_id: &str, id: &str, comment: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE versions SET comment = ?3 WHERE disk_id = ?1 AND id = ?2",
                params![disk_id, id, comment],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownVersion(id.to_owned()));
            }
            Ok(())
        })
    }
}

impl Updates for SqliteMeta {
    fn start_update(
        &self,
        disk_id: &str,
        booted: &str,
        session: &Session,
        guid: &str,
        secret_hash: &Hash,
    ) -> Result<(UpdateRow, bool), MetaError> {
        let secret_hash = &secret_hash.as_bytes()[..];
        self.write(|tx| {
            let latest = latest_id(tx, disk_id)?;
            if latest != booted {
                return Err(MetaError::NotLatest {
                    latest,
                    booted: booted.to_owned(),
                });
            }
            if let Some(live) = live_update(tx, disk_id)? {
                // The same terminal and user starting again (a start killed before it
                // recorded the update locally) take their own update back.
                if live.terminal == session.terminal && live.user == session.user {
                    // Its secret may be lost with the interrupted start: a new one.
                    tx.execute(
                        "UPDATE updates SET cancel_secret_hash = ?2 WHERE guid = ?1",
                        params![live.guid, secret_hash],
                    )?;
                    return Ok((live, true));
                }
                return Err(MetaError::DiskBusy {
                    terminal: live.terminal,
                });
            }
            tx.execute(
                "INSERT INTO updates (guid, disk_id, base_version, terminal, user, state, created_at,
                                      updated_at, cancel_secret_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'reserved', ?6, ?6, ?7)",
                params![guid, disk_id, booted, session.terminal, session.user, now(), secret_hash],
            )?;
            Ok((update_by_guid(tx, guid)?, false))
        })
    }

    fn cancel_with_secret(&self, guid: &str, secret_hash: &Hash) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            let held: Option<Option<Vec<u8>>> = tx
                .query_row(
                    "SELECT cancel_secret_hash FROM updates WHERE guid = ?1",
                    [guid],
                    |r| r.get(0),
                )
                .optional()?;
            // An unknown update and a wrong secret are told apart by nobody.
            if held.flatten().as_deref() != Some(&secret_hash.as_bytes()[..]) {
                return Err(MetaError::BadSecret);
            }
            live_by_guid(tx, guid)?;
            tx.execute(
                "UPDATE updates SET state = 'cancelled', updated_at = ?2, stopped_by = user
                 WHERE guid = ?1",
                params![guid, now()],
            )?;
            end_update(tx, guid)?;
            update_by_guid(tx, guid)
        })
    }

    fn update(&self, guid: &str) -> Result<UpdateRow, MetaError> {
        update_by_guid(&self.conn(), guid)
    }

    fn updates(&self, query: &UpdateQuery) -> Result<Vec<UpdateRow>, MetaError> {
        let conn = self.conn();
        let which = query.which;
        let filters = "(?1 IS NULL OR user = ?1) AND (?2 IS NULL OR disk_id = ?2)
            AND (?3 IS NULL OR terminal = ?3) AND (?4 IS NULL OR state = ?4)";
        let state = which.state().map(UpdateState::as_str);
        let mut rows = Vec::new();
        if which.wants_live() && query.before.is_none() {
            // At most one per disk (the partial index `one_live_update_per_disk`).
            let mut stmt = conn.prepare(&format!(
                "{UPDATE_SELECT} WHERE state IN ('reserved', 'uploading') AND {filters}
                 ORDER BY rowid"
            ))?;
            let live = stmt.query_map(
                params![query.user, query.disk_id, query.terminal, state],
                update_row,
            )?;
            for row in live {
                rows.push(row?);
            }
        }
        if which.wants_ended() && query.limit > 0 {
            let mut stmt = conn.prepare(&format!(
                "{UPDATE_SELECT} WHERE state NOT IN ('reserved', 'uploading') AND {filters}
                 AND rowid < ?5 ORDER BY rowid DESC LIMIT ?6"
            ))?;
            let ended = stmt.query_map(
                params![
                    query.user,
                    query.disk_id,
                    query.terminal,
                    state,
                    query.before.unwrap_or(i64::MAX),
                    i64::try_from(query.limit).unwrap_or(i64::MAX)
                ],
                update_row,
            )?;
            for row in ended {
                rows.push(row?);
            }
        }
        Ok(rows)
    }

    fn terminals(&self, user: Option<&str>) -> Result<Vec<UpdateRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{UPDATE_SELECT} WHERE rowid IN (SELECT max(rowid) FROM updates
             WHERE ?1 IS NULL OR user = ?1 GROUP BY terminal) ORDER BY terminal"
        ))?;
        let rows = stmt.query_map([user], update_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn live_update(&self, disk_id: &str) -> Result<Option<UpdateRow>, MetaError> {
        live_update(&self.conn(), disk_id)
    }

    fn set_state(
        &self,
        guid: &str,
        to: UpdateState,
        by: Option<&str>,
    ) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            live_by_guid(tx, guid)?;
            tx.execute(
                "UPDATE updates SET state = ?2, updated_at = ?3,
                 stopped_by = coalesce(?4, stopped_by) WHERE guid = ?1",
                params![guid, to.as_str(), now(), by],
            )?;
            if !to.is_live() {
                end_update(tx, guid)?;
            }
            update_by_guid(tx, guid)
        })
    }

    fn abort_upload(&self, guid: &str, by: &str) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            live_by_guid(tx, guid)?;
            tx.execute(
                "UPDATE updates SET state = 'reserved', session = session + 1, updated_at = ?2,
                 stopped_by = ?3 WHERE guid = ?1",
                params![guid, now(), by],
            )?;
            tx.execute("DELETE FROM upload_entries WHERE guid = ?1", [guid])?;
            update_by_guid(tx, guid)
        })
    }

    fn open_session(&self, guid: &str) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            uploading(tx, guid)?;
            tx.execute(
                "UPDATE updates SET session = session + 1, updated_at = ?2 WHERE guid = ?1",
                params![guid, now()],
            )?;
            update_by_guid(tx, guid)
        })
    }

    fn record_offers(&self, guid: &str, session: u64, offers: &[Offer]) -> Result<(), MetaError> {
        self.write(|tx| record_offers(tx, guid, session, offers))
    }

    fn offers(&self, guid: &str, session: u64) -> Result<Vec<Offer>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT block_index, hash FROM upload_entries WHERE guid = ?1 AND session = ?2
             ORDER BY block_index",
        )?;
        let rows = stmt.query_map(params![guid, session as i64], |r| {
            let index: i64 = r.get(0)?;
            let hash: Option<Vec<u8>> = r.get(1)?;
            Ok((index as u64, hash))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (index, hash) = row?;
            let entry =
                match hash {
                    None => Entry::Zero,
                    Some(bytes) => Entry::Chunk(Hash::from_slice(&bytes).ok_or_else(|| {
                        MetaError::Damaged("a stored entry hash is damaged".into())
                    })?),
                };
            out.push(Offer { index, entry });
        }
        Ok(out)
    }

    fn add_received(&self, guid: &str, chunks: u64, bytes: u64) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE updates SET chunks_received = chunks_received + ?2,
                                    bytes_received = bytes_received + ?3 WHERE guid = ?1",
                params![guid, chunks as i64, bytes as i64],
            )?;
            Ok(())
        })
    }

    fn commit_update(
        &self,
        guid: &str,
        session: u64,
        version: &VersionRow,
        write_manifest: &mut dyn FnMut() -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        self.write(|tx| {
            let row = uploading(tx, guid)?;
            if row.session != session {
                return Err(MetaError::TakenOver);
            }
            let latest = latest_id(tx, &row.disk_id)?;
            if latest != row.base_version {
                return Err(MetaError::NotLatest {
                    latest,
                    booted: row.base_version,
                });
            }
            write_manifest()?;
            insert_version(tx, version)?;
            tx.execute(
                "UPDATE updates SET state = 'committed', new_version = ?2, updated_at = ?3 WHERE guid = ?1",
                params![guid, version.id, now()],
            )?;
            end_update(tx, guid)
        })
    }
}

impl Cluster for SqliteMeta {
    fn transfer_alive(&self, url: &str, uploads: &[UploadReport]) -> Result<(), MetaError> {
        self.write(|tx| {
            let at = now();
            tx.execute(
                "INSERT INTO transfer_servers (url, started_at, seen_at, uploads)
                 VALUES (?1, ?2, ?2, ?3)
                 ON CONFLICT (url) DO UPDATE SET seen_at = excluded.seen_at,
                     uploads = excluded.uploads",
                params![url, at, uploads.len() as i64],
            )?;
            tx.execute("DELETE FROM upload_reports WHERE transfer = ?1", [url])?;
            for u in uploads {
                tx.execute(
                    "INSERT INTO upload_reports (guid, transfer, session, needed, stored, on_wire, at, job)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (guid) DO UPDATE SET transfer = excluded.transfer,
                         session = excluded.session, needed = excluded.needed,
                         stored = excluded.stored, on_wire = excluded.on_wire, at = excluded.at,
                         job = excluded.job",
                    params![
                        u.guid,
                        url,
                        u.session as i64,
                        u.needed as i64,
                        u.stored as i64,
                        u.on_wire as i64,
                        at,
                        JobReport::to_text(u.job.as_ref())
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn upload_reports(&self, since: i64) -> Result<Vec<UploadReport>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT guid, session, needed, stored, on_wire, job FROM upload_reports
             WHERE at >= ?1 ORDER BY guid",
        )?;
        let rows = stmt.query_map([since], |r| {
            Ok(UploadReport {
                guid: r.get(0)?,
                session: r.get::<_, i64>(1)? as u64,
                needed: r.get::<_, i64>(2)? as u64,
                stored: r.get::<_, i64>(3)? as u64,
                on_wire: r.get::<_, i64>(4)? as u64,
                job: JobReport::from_text(r.get(5)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn transfer_gone(&self, url: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM transfer_servers WHERE url = ?1", [url])?;
            tx.execute("DELETE FROM upload_reports WHERE transfer = ?1", [url])?;
            Ok(())
        })
    }

    fn transfer_servers(&self) -> Result<Vec<TransferRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT url, started_at, seen_at, uploads,
                 (SELECT count(*) FROM updates WHERE carrier = url
                     AND state IN ('reserved', 'uploading'))
             FROM transfer_servers ORDER BY url",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TransferRow {
                url: r.get(0)?,
                started_at: r.get(1)?,
                seen_at: r.get(2)?,
                uploads: r.get::<_, i64>(3)? as u64,
                carried: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn carrier(&self, guid: &str) -> Result<Option<String>, MetaError> {
        Ok(self
            .conn()
            .query_row("SELECT carrier FROM updates WHERE guid = ?1", [guid], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    fn set_carrier(&self, guid: &str, url: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE updates SET carrier = ?2 WHERE guid = ?1",
                params![guid, url],
            )?;
            Ok(())
        })
    }

    fn take_lease(
        &self,
        holder: &str,
        exclusive: bool,
        expires_at: i64,
    ) -> Result<bool, MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM store_leases WHERE expires_at < ?1", [now()])?;
            let conflicts: i64 = tx.query_row(
                "SELECT count(*) FROM store_leases WHERE holder <> ?1 AND (?2 OR exclusive)",
                params![holder, exclusive],
                |r| r.get(0),
            )?;
            if conflicts > 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO store_leases (holder, exclusive, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (holder) DO UPDATE SET exclusive = excluded.exclusive,
                     expires_at = excluded.expires_at",
                params![holder, exclusive, expires_at],
            )?;
            Ok(true)
        })
    }

    fn drop_lease(&self, holder: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM store_leases WHERE holder = ?1", [holder])?;
            Ok(())
        })
    }
}

impl Upkeep for SqliteMeta {
    fn record_upkeep(&self, kind: &str, outcome: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO upkeep_runs (kind, at, outcome) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind) DO UPDATE SET at = excluded.at, outcome = excluded.outcome",
                params![kind, now(), outcome],
            )?;
            Ok(())
        })
    }

    fn last_upkeep(&self, kind: &str) -> Result<Option<(i64, String)>, MetaError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT at, outcome FROM upkeep_runs WHERE kind = ?1",
                [kind],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn versions_since(&self, seq: i64) -> Result<Vec<(i64, VersionRow)>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, {} WHERE seq > ?1 ORDER BY seq",
            VERSION_SELECT.trim_start_matches("SELECT ")
        ))?;
        let rows = stmt.query_map([seq], |r| {
            let seq: i64 = r.get(0)?;
            let row = version_row_at(r, 1)?;
            Ok((seq, row))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn live_hashes(&self) -> Result<Vec<Hash>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT e.hash FROM upload_entries e JOIN updates u ON u.guid = e.guid
             WHERE u.state IN ('reserved', 'uploading') AND e.hash IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(hash) = Hash::from_slice(&row?) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    fn prune(&self, before: i64) -> Result<usize, MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE expires_at < ?1", [now()])?;
            tx.execute(
                "DELETE FROM upload_entries WHERE guid IN (SELECT guid FROM updates
                 WHERE state NOT IN ('reserved', 'uploading') AND updated_at < ?1)",
                [before],
            )?;
            Ok(tx.execute(
                "DELETE FROM updates WHERE state NOT IN ('reserved', 'uploading') AND updated_at < ?1",
                [before],
            )?)
        })
    }

    fn exclusive_dyn(
        &self,
        work: &mut dyn FnMut(&dyn LockedMeta) -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        self.write(|tx| work(&Locked(tx)))
    }
}

const VERSION_SELECT: &str = "SELECT disk_id, id, parent, comment, user, terminal, created_at,
    root, blocks_changed, bytes_stored FROM versions";
const UPDATE_SELECT: &str = "SELECT guid, disk_id, base_version, terminal, user, state,
    new_version, chunks_received, bytes_received, session, rowid, created_at, updated_at,
    carrier, stopped_by FROM updates";

fn disk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DiskRow> {
    Ok(DiskRow {
        id: r.get(0)?,
        name: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        block_size: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    version_row_at(r, 0)
}

/// A version row whose columns start at `at`.
fn version_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<VersionRow> {
    let root: Vec<u8> = r.get(at + 7)?;
    Ok(VersionRow {
        disk_id: r.get(at)?,
        id: r.get(at + 1)?,
        parent: r.get(at + 2)?,
        comment: r.get(at + 3)?,
        user: r.get(at + 4)?,
        terminal: r.get(at + 5)?,
        created_at: r.get(at + 6)?,
        root: Hash::from_slice(&root).unwrap_or(Hash::from_bytes([0; 32])),
        blocks_changed: r.get::<_, i64>(at + 8)? as u64,
        bytes_stored: r.get::<_, i64>(at + 9)? as u64,
    })
}

/// The database under its write lock, for `exclusive`.
#[derive(Debug)]
struct Locked<'a>(&'a rusqlite::Transaction<'a>);

impl LockedMeta for Locked<'_> {
    /// Whether a live update has offered this hash (in any session).
    fn live_update_holds(&self, hash: &Hash) -> Result<bool, MetaError> {
        Ok(self
            .0
            .query_row(
                "SELECT 1 FROM upload_entries e JOIN updates u ON u.guid = e.guid
                 WHERE e.hash = ?1 AND u.state IN ('reserved', 'uploading') LIMIT 1",
                [&hash.as_bytes()[..]],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// The sequence number of the newest version of any disk (0 when none).
    fn newest_seq(&self) -> Result<i64, MetaError> {
        Ok(self
            .0
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM versions", [], |r| {
                r.get(0)
            })?)
    }

    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError> {
        version_exists(self.0, disk_id, id)
    }

    fn disk_exists(&self, disk_id: &str) -> Result<bool, MetaError> {
        Ok(self
            .0
            .query_row("SELECT 1 FROM disks WHERE id = ?1", [disk_id], |_| Ok(true))
            .optional()?
            .unwrap_or(false))
    }
}

fn update_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UpdateRow> {
    Ok(UpdateRow {
        guid: r.get(0)?,
        disk_id: r.get(1)?,
        base_version: r.get(2)?,
        terminal: r.get(3)?,
        user: r.get(4)?,
        state: UpdateState::parse(&r.get::<_, String>(5)?),
        new_version: r.get(6)?,
        chunks_received: r.get::<_, i64>(7)? as u64,
        bytes_received: r.get::<_, i64>(8)? as u64,
        session: r.get::<_, i64>(9)? as u64,
        seq: r.get(10)?,
        started_at: r.get(11)?,
        changed_at: r.get(12)?,
        carrier: r.get(13)?,
        stopped_by: r.get(14)?,
    })
}

fn insert_version(conn: &Connection, v: &VersionRow) -> Result<(), MetaError> {
    conn.execute(
        "INSERT INTO versions (disk_id, id, parent, comment, user, terminal, created_at, root,
                               blocks_changed, bytes_stored)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            v.disk_id,
            v.id,
            v.parent,
            v.comment,
            v.user,
            v.terminal,
            v.created_at,
            &v.root.as_bytes()[..],
            v.blocks_changed as i64,
            v.bytes_stored as i64
        ],
    )?;
    Ok(())
}

/// What goes when an update ends: its offered entries and its cancel secret.
fn end_update(tx: &Transaction<'_>, guid: &str) -> Result<(), MetaError> {
    tx.execute("DELETE FROM upload_entries WHERE guid = ?1", [guid])?;
    tx.execute(
        "UPDATE updates SET cancel_secret_hash = NULL WHERE guid = ?1",
        [guid],
    )?;
    Ok(())
}

/// An update that must be live (reserved or uploading).
fn live_by_guid(conn: &Connection, guid: &str) -> Result<UpdateRow, MetaError> {
    let row = update_by_guid(conn, guid)?;
    if !row.state.is_live() {
        return Err(MetaError::UpdateNotLive {
            guid: guid.to_owned(),
            state: row.state,
        });
    }
    Ok(row)
}

/// An update that must be uploading; one reserved again was aborted by an admin.
fn uploading(conn: &Connection, guid: &str) -> Result<UpdateRow, MetaError> {
    let row = update_by_guid(conn, guid)?;
    super::must_be_uploading(&row)?;
    Ok(row)
}

fn update_by_guid(conn: &Connection, guid: &str) -> Result<UpdateRow, MetaError> {
    conn.query_row(
        &format!("{UPDATE_SELECT} WHERE guid = ?1"),
        [guid],
        update_row,
    )
    .optional()?
    .ok_or_else(|| MetaError::UnknownUpdate(guid.to_owned()))
}

/// The id of a disk's latest version.
fn latest_id(conn: &Connection, disk_id: &str) -> Result<String, MetaError> {
    Ok(conn.query_row(
        "SELECT id FROM versions WHERE disk_id = ?1 ORDER BY seq DESC LIMIT 1",
        [disk_id],
        |r| r.get(0),
    )?)
}

fn version_exists(conn: &Connection, disk_id: &str, id: &str) -> Result<bool, MetaError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM versions WHERE disk_id = ?1 AND id = ?2",
            [disk_id, id],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false))
}

fn live_update(conn: &Connection, disk_id: &str) -> Result<Option<UpdateRow>, MetaError> {
    Ok(conn
        .query_row(
            &format!("{UPDATE_SELECT} WHERE disk_id = ?1 AND state IN ('reserved', 'uploading')"),
            [disk_id],
            update_row,
        )
        .optional()?)
}

fn record_offers(
    tx: &Transaction<'_>,
    guid: &str,
    session: u64,
    offers: &[Offer],
) -> Result<(), MetaError> {
    super::still_uploading(&update_by_guid(tx, guid)?, session)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO upload_entries (guid, block_index, hash, session)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for offer in offers {
            let hash = offer.entry.hash().map(|h| h.as_bytes().to_vec());
            stmt.execute(params![guid, offer.index as i64, hash, session as i64])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_of_an_older_data_dir_become_admins_and_new_ones_get_roles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        // A data dir written before roles existed (schema 2), with one user.
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i + 1).unwrap();
            }
            conn.execute(
                "INSERT INTO users (name, password_hash, created_at) VALUES ('old', 'x', 0)",
                [],
            )
            .unwrap();
        }
        let meta = SqliteMeta::open(&path).unwrap();
        assert_eq!(meta.role("old").unwrap(), Some(Role::Admin));
        assert_eq!(meta.add_user("next", "x", None).unwrap(), Role::Operator);
        assert!(matches!(
            meta.add_user("next", "y", None),
            Err(MetaError::UserExists(_))
        ));
        assert_eq!(
            meta.add_user("boss", "x", Some(Role::Admin)).unwrap(),
            Role::Admin
        );

        let fresh = SqliteMeta::open(&dir.path().join("fresh.sqlite")).unwrap();
        assert_eq!(fresh.add_user("first", "x", None).unwrap(), Role::Admin);
        assert_eq!(fresh.add_user("second", "x", None).unwrap(), Role::Operator);
        let session = Session {
            user: "second".into(),
            terminal: "PC-1".into(),
            role: Role::Operator,
        };
        fresh
            .add_token(&Hash::of(b"t"), &session, now() + 60)
            .unwrap();
        assert_eq!(fresh.session(&Hash::of(b"t")).unwrap(), Some(session));
        fresh.set_password("second", "new").unwrap();
        assert_eq!(
            fresh.session(&Hash::of(b"t")).unwrap(),
            None,
            "sessions end"
        );
        fresh.delete_user("second").unwrap();
        assert!(matches!(
            fresh.delete_user("second"),
            Err(MetaError::UnknownUser(_))
        ));
        let names: Vec<String> = fresh.users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["first"]);
    }

    use crate::meta::contract::{self, user_and_disk, version};

    /// SQLite keeps the metadata contract.
    #[test]
    fn sqlite_keeps_the_metadata_contract() {
        let dir = tempfile::tempdir().unwrap();
        let count = std::cell::Cell::new(0);
        contract::check(&|| {
            count.set(count.get() + 1);
            let path = dir.path().join(format!("meta-{}.sqlite", count.get()));
            Box::new(SqliteMeta::open(&path).unwrap())
        });
    }

    #[test]
    fn prune_deletes_long_ended_updates_and_expired_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.sqlite")).unwrap();
        let session = user_and_disk(&meta);
        meta.add_token(&Hash::of(b"old"), &session, now() - 1)
            .unwrap();
        meta.add_token(&Hash::of(b"new"), &session, now() + 60)
            .unwrap();
        meta.start_update("d", "v1", &session, "ended", &Hash::of(b"s"))
            .unwrap();
        meta.set_state("ended", UpdateState::Cancelled, None)
            .unwrap();
        meta.start_update("d", "v1", &session, "live", &Hash::of(b"s"))
            .unwrap();
        meta.conn()
            .execute("UPDATE updates SET updated_at = 0", [])
            .unwrap();
        assert_eq!(
            meta.prune(now() - 3600).unwrap(),
            1,
            "only the ended update"
        );
        assert!(meta.update("live").is_ok());
        assert!(meta.update("ended").is_err());
        let tokens: i64 = meta
            .conn()
            .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 1, "the expired token is gone");
    }

    /// Runs `change` while another connection holds the write lock and commits a change of
    /// its own 300 ms later, as `serve` does while an admin command runs.
    fn while_another_commits<T>(path: &Path, change: impl FnOnce() -> T) -> T {
        let other = Connection::open(path).unwrap();
        other
            .execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO upkeep_runs (kind, at, outcome) VALUES ('other', 0, '')
                 ON CONFLICT (kind) DO UPDATE SET at = at + 1;",
            )
            .unwrap();
        let committer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        let out = change();
        committer.join().unwrap();
        out
    }

    #[test]
    fn changes_wait_for_another_connections_commit_instead_of_failing_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let meta = SqliteMeta::open(&path).unwrap();
        let session = user_and_disk(&meta);
        let second = DiskRow {
            id: "d2".into(),
            name: "second".into(),
            size: 1,
            block_size: 1 << 16,
            created_at: 0,
        };
        let mut first_of_second = version("w1", None);
        first_of_second.disk_id = "d2".into();
        // Each admin command's change, and each of an upload's, once.
        type Change = Box<dyn FnOnce(&SqliteMeta) -> Result<(), MetaError>>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "disk import",
                Box::new(move |m| m.create_disk(&second, &first_of_second)),
            ),
            (
                "user add",
                Box::new(|m| m.add_user("v", "x", None).map(drop)),
            ),
            ("user passwd", Box::new(|m| m.set_password("v", "y"))),
            (
                "login",
                Box::new(move |m| m.add_token(&Hash::of(b"t"), &session, now() + 60)),
            ),
            ("logout", Box::new(|m| m.remove_token(&Hash::of(b"t")))),
            (
                "update start",
                Box::new(|m| {
                    let session = Session {
                        user: "u".into(),
                        terminal: "PC-1".into(),
                        role: Role::Admin,
                    };
                    m.start_update("d", "v1", &session, "g", &Hash::of(b"s"))
                        .map(drop)
                }),
            ),
            (
                "upload",
                Box::new(|m| m.set_state("g", UpdateState::Uploading, None).map(drop)),
            ),
            ("open", Box::new(|m| m.open_session("g").map(drop))),
            (
                "offers",
                Box::new(|m| {
                    m.record_offers(
                        "g",
                        1,
                        &[Offer {
                            index: 0,
                            entry: Entry::Zero,
                        }],
                    )
                }),
            ),
            ("received", Box::new(|m| m.add_received("g", 1, 1))),
            (
                "finish",
                Box::new(|m| m.commit_update("g", 1, &version("v2", Some("v1")), &mut || Ok(()))),
            ),
            ("version delete", Box::new(|m| m.delete_version("d", "v1"))),
            (
                "store gc",
                Box::new(|m| m.exclusive_dyn(&mut |db| db.newest_seq().map(drop))),
            ),
            (
                "store verify",
                Box::new(|m| m.record_upkeep("verify", "clean")),
            ),
            ("prune", Box::new(|m| m.prune(0).map(drop))),
            ("user delete", Box::new(|m| m.delete_user("v"))),
            ("disk delete", Box::new(|m| m.delete_disk("d2").map(drop))),
        ];
        for (name, change) in changes {
            let done = while_another_commits(&path, || change(&meta));
            assert!(done.is_ok(), "{name}: {done:?}");
        }
        assert_eq!(meta.latest_version("d").unwrap().id, "v2");
    }
}
