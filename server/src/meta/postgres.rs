//! The metadata in PostgreSQL (13 or later), for sites whose servers share one database
//! (`--meta postgres://USER@HOST:PORT/DB`). The schema is created and migrated by the
//! server (the table `hotate_schema` holds its version).
//!
//! Two rules make it keep the contract that SQLite's single writer kept by itself:
//! - **One writer at a time, across every server**: each change is one transaction that
//!   first takes a transaction-level advisory lock ([`WRITE_LOCK`]). Check-then-insert
//!   (users, disks, updates), one live update per disk, and commit order against `store
//!   gc` (which runs under the same lock, see [`Upkeep::exclusive_dyn`]) are therefore as
//!   on SQLite: a version's `seq` is given in commit order. Reads take no lock.
//! - **Durable when it returns**: every connection runs with `synchronous_commit = on`;
//!   PostgreSQL stops (and recovers from its WAL) rather than go on after a failed fsync.
//!
//! The `postgres` client runs its own runtime, so each call runs on a short-lived thread
//! of its own, whatever thread (async or not) calls it; at most [`POOL`] connections are
//! open.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use hotate_engine::{Entry, Hash, Offer};
use postgres::{Client, GenericClient, NoTls, Row, Transaction};

use super::{
    Accounts, Catalog, Cluster, DiskRow, JobReport, LockedMeta, MetaError, Role, Session,
    TransferRow, UpdateQuery, UpdateRow, UpdateState, Updates, Upkeep, UploadReport, UserRow,
    VersionRow, now,
};

/// The advisory lock every change takes: "Hotate" in ASCII.
const WRITE_LOCK: i64 = 0x486f_7461_7465;

/// Connections open at most, per process.
const POOL: usize = 8;

/// Schema migrations, applied in order; the index + 1 is the version after each.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    terminal TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_by_user ON tokens(user_name);
CREATE TABLE disks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size BIGINT NOT NULL,
    block_size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE versions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    disk_id TEXT NOT NULL REFERENCES disks(id),
    id TEXT NOT NULL,
    parent TEXT,
    comment TEXT NOT NULL,
    user_name TEXT NOT NULL,
    terminal TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    root BYTEA NOT NULL,
    blocks_changed BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    UNIQUE (disk_id, id)
);
CREATE TABLE updates (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    guid TEXT PRIMARY KEY,
    disk_id TEXT NOT NULL REFERENCES disks(id),
    base_version TEXT NOT NULL,
    terminal TEXT NOT NULL,
    user_name TEXT NOT NULL,
    state TEXT NOT NULL,
    new_version TEXT,
    chunks_received BIGINT NOT NULL DEFAULT 0,
    bytes_received BIGINT NOT NULL DEFAULT 0,
    session BIGINT NOT NULL DEFAULT 0,
    cancel_secret_hash BYTEA,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX one_live_update_per_disk ON updates(disk_id)
    WHERE state IN ('reserved', 'uploading');
CREATE TABLE upload_entries (
    guid TEXT NOT NULL REFERENCES updates(guid),
    block_index BIGINT NOT NULL,
    hash BYTEA,
    session BIGINT NOT NULL,
    PRIMARY KEY (guid, block_index)
);
CREATE INDEX upload_entries_by_hash ON upload_entries(hash);
CREATE TABLE upkeep_runs (
    kind TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL
);
",
    r"
CREATE TABLE transfer_servers (
    url TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    uploads BIGINT NOT NULL
);
ALTER TABLE updates ADD COLUMN carrier TEXT;
CREATE TABLE store_leases (
    holder TEXT PRIMARY KEY,
    exclusive BOOLEAN NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE upload_reports (
    guid TEXT PRIMARY KEY,
    transfer TEXT NOT NULL,
    session BIGINT NOT NULL,
    needed BIGINT NOT NULL,
    stored BIGINT NOT NULL,
    on_wire BIGINT NOT NULL,
    at BIGINT NOT NULL
);
",
    r"
ALTER TABLE updates ADD COLUMN stopped_by TEXT;
ALTER TABLE upload_reports ADD COLUMN job TEXT;
",
];

/// The metadata database in PostgreSQL.
pub struct PostgresMeta {
    config: postgres::Config,
    /// The database as a user reads it: host, port and name, no password.
    target: String,
    idle: Mutex<Pool>,
    returned: Condvar,
}

#[derive(Default)]
struct Pool {
    clients: Vec<Client>,
    /// Connections open, idle or in use.
    open: usize,
}

impl std::fmt::Debug for PostgresMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresMeta")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresMeta {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's runtime too: off the caller's thread.
        let clients = std::mem::take(&mut self.pool().clients);
        std::thread::scope(|s| {
            s.spawn(move || drop(clients));
        });
    }
}

impl PostgresMeta {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`),
    /// creating and migrating the schema.
    ///
    /// # Errors
    /// `BadRequest` for a URL that does not parse; the database's error when it cannot be
    /// reached or migrated.
    pub fn open(url: &str) -> Result<Self, MetaError> {
        let meta = Self::connect(url)?;
        meta.migrate()?;
        Ok(meta)
    }

    /// Connects to the database at `url` without creating anything: `Ok(None)` when it
    /// holds no Hotate schema yet.
    ///
    /// # Errors
    /// As [`PostgresMeta::open`].
    pub fn open_existing(url: &str) -> Result<Option<Self>, MetaError> {
        let meta = Self::connect(url)?;
        let exists = meta.with_client(|c| {
            Ok(
                c.query_one("SELECT to_regclass('hotate_schema') IS NOT NULL", &[])?
                    .get::<_, bool>(0),
            )
        })?;
        if !exists {
            return Ok(None);
        }
        meta.migrate()?;
        Ok(Some(meta))
    }

    fn connect(url: &str) -> Result<Self, MetaError> {
        let config: postgres::Config = url.parse().map_err(|e| {
            MetaError::BadRequest(format!(
                "--meta {url:?} is not a PostgreSQL URL ({e}): use postgres://USER@HOST:PORT/DB"
            ))
        })?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let target = format!(
            "postgres://{}@{}:{}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or("")
        );
        let meta = Self {
            config,
            target,
            idle: Mutex::new(Pool::default()),
            returned: Condvar::new(),
        };
        // Reach it now: a wrong host or password is told at start, not at first use.
        meta.with_client(|_| Ok(()))?;
        Ok(meta)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` with a connection of the pool, on a thread of its own (the client
    /// blocks on its own runtime, which an async caller's thread must not do).
    fn with_client<T: Send>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, MetaError> + Send,
    ) -> Result<T, MetaError> {
        let idle = {
            let mut pool = self.pool();
            loop {
                if let Some(client) = pool.clients.pop() {
                    break Some(client);
                }
                if pool.open < POOL {
                    pool.open += 1;
                    break None;
                }
                pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
            }
        };
        let ran = std::thread::scope(|s| {
            s.spawn(|| {
                let client = match idle {
                    Some(client) => Ok(client),
                    // Every change this connection commits is durable when it returns.
                    None => self
                        .config
                        .connect(NoTls)
                        .and_then(|mut client| {
                            client.batch_execute("SET synchronous_commit = on")?;
                            Ok(client)
                        })
                        .map_err(|e| self.unreachable(&e)),
                };
                let mut client = match client {
                    Ok(client) => client,
                    Err(e) => {
                        self.give_back(None);
                        return Err(e);
                    }
                };
                let out = work(&mut client);
                self.give_back(Some(client));
                out
            })
            .join()
        });
        ran.unwrap_or_else(|_| {
            self.give_back(None);
            Err(MetaError::Damaged(
                "a metadata call failed unexpectedly".into(),
            ))
        })
    }

    /// Returns a connection to the pool; `None` (or a closed one) frees its place.
    fn give_back(&self, client: Option<Client>) {
        let mut pool = self.pool();
        match client {
            Some(client) if !client.is_closed() => pool.clients.push(client),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        self.returned.notify_one();
    }

    fn unreachable(&self, e: &postgres::Error) -> MetaError {
        MetaError::Backend(
            format!(
                "cannot reach the metadata database {} ({e}): check --meta (HOTATE_META), that \
                 PostgreSQL runs there and accepts this user",
                self.target
            )
            .into(),
        )
    }

    /// Runs `work` in one transaction holding [`WRITE_LOCK`], and commits it. Nothing is
    /// changed when `work` fails.
    fn write<T: Send>(
        &self,
        work: impl FnOnce(&mut Transaction<'_>) -> Result<T, MetaError> + Send,
    ) -> Result<T, MetaError> {
        self.with_client(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let out = work(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn migrate(&self) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS hotate_schema (version INTEGER NOT NULL)",
            )?;
            let current = tx
                .query_opt("SELECT version FROM hotate_schema", &[])?
                .map_or(0, |r| r.get::<_, i32>(0));
            let current = usize::try_from(current).unwrap_or(0);
            if current > MIGRATIONS.len() {
                return Err(MetaError::Damaged(format!(
                    "the metadata was written by a newer Hotate (schema {current})"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                tx.batch_execute(sql)?;
                let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.execute("DELETE FROM hotate_schema", &[])?;
                tx.execute(
                    "INSERT INTO hotate_schema (version) VALUES ($1)",
                    &[&version],
                )?;
            }
            Ok(())
        })
    }
}

// The cause is part of the message, so it is not also reported as a source.
impl From<postgres::Error> for MetaError {
    fn from(cause: postgres::Error) -> Self {
        Self::Backend(Box::new(cause))
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Accounts for PostgresMeta {
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Option<Role>,
    ) -> Result<Role, MetaError> {
        self.write(|tx| {
            let users: i64 = tx.query_one("SELECT COUNT(*) FROM users", &[])?.get(0);
            let role = role.unwrap_or(if users == 0 {
                Role::Admin
            } else {
                Role::Operator
            });
            let added = tx.execute(
                "INSERT INTO users (name, password_hash, created_at, role) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &password_hash, &now(), &role.as_str()],
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
                "UPDATE users SET password_hash = $2 WHERE name = $1",
                &[&name, &password_hash],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            tx.execute("DELETE FROM tokens WHERE user_name = $1", &[&name])?;
            Ok(())
        })
    }

    fn set_role(&self, name: &str, role: Role) -> Result<(), MetaError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET role = $2 WHERE name = $1",
                &[&name, &role.as_str()],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            Ok(())
        })
    }

    fn delete_user(&self, name: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE user_name = $1", &[&name])?;
            if tx.execute("DELETE FROM users WHERE name = $1", &[&name])? == 0 {
                return Err(MetaError::UnknownUser(name.to_owned()));
            }
            Ok(())
        })
    }

    fn users(&self) -> Result<Vec<UserRow>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                "SELECT name, role, created_at FROM users ORDER BY name",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| UserRow {
                    name: r.get(0),
                    role: Role::parse(r.get(1)).unwrap_or(Role::Operator),
                    created_at: r.get(2),
                })
                .collect())
        })
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>, MetaError> {
        self.with_client(|c| {
            Ok(
                c.query_opt("SELECT password_hash FROM users WHERE name = $1", &[&name])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn add_token(
        &self,
        token_hash: &Hash,
        session: &Session,
        expires_at: i64,
    ) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE expires_at < $1", &[&now()])?;
            tx.execute(
                "INSERT INTO tokens (token_hash, user_name, terminal, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &&token_hash.as_bytes()[..],
                    &session.user,
                    &session.terminal,
                    &expires_at,
                ],
            )?;
            Ok(())
        })
    }

    fn remove_token(&self, token_hash: &Hash) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM tokens WHERE token_hash = $1",
                &[&&token_hash.as_bytes()[..]],
            )?;
            Ok(())
        })
    }

    fn session(&self, token_hash: &Hash) -> Result<Option<Session>, MetaError> {
        self.with_client(|c| {
            Ok(c.query_opt(
                "SELECT t.user_name, t.terminal, u.role FROM tokens t
                 JOIN users u ON u.name = t.user_name
                 WHERE t.token_hash = $1 AND t.expires_at >= $2",
                &[&&token_hash.as_bytes()[..], &now()],
            )?
            .map(|r| Session {
                user: r.get(0),
                terminal: r.get(1),
                role: Role::parse(r.get(2)).unwrap_or(Role::Operator),
            }))
        })
    }

    fn role(&self, name: &str) -> Result<Option<Role>, MetaError> {
        self.with_client(|c| {
            Ok(
                c.query_opt("SELECT role FROM users WHERE name = $1", &[&name])?
                    .map(|r| Role::parse(r.get(0)).unwrap_or(Role::Operator)),
            )
        })
    }
}

impl Catalog for PostgresMeta {
    fn disk(&self, id_or_name: &str) -> Result<DiskRow, MetaError> {
        self.with_client(|c| {
            c.query_opt(
                &format!("{DISK_SELECT} WHERE id = $1 OR name = $1"),
                &[&id_or_name],
            )?
            .map(|r| disk_row(&r))
            .ok_or_else(|| MetaError::UnknownDisk(id_or_name.to_owned()))
        })
    }

    fn disks(&self) -> Result<Vec<DiskRow>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(&format!("{DISK_SELECT} ORDER BY name"), &[])?;
            Ok(rows.iter().map(disk_row).collect())
        })
    }

    fn create_disk(&self, disk: &DiskRow, first: &VersionRow) -> Result<(), MetaError> {
        self.write(|tx| {
            if tx
                .query_opt("SELECT 1 FROM disks WHERE name = $1", &[&disk.name])?
                .is_some()
            {
                return Err(MetaError::DiskExists(disk.name.clone()));
            }
            tx.execute(
                "INSERT INTO disks (id, name, size, block_size, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &disk.id,
                    &disk.name,
                    &to_i64(disk.size),
                    &i64::from(disk.block_size),
                    &disk.created_at,
                ],
            )?;
            insert_version(tx, first)
        })
    }

    fn versions(&self, disk_id: &str) -> Result<Vec<VersionRow>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                &format!("{VERSION_SELECT} WHERE disk_id = $1 ORDER BY seq"),
                &[&disk_id],
            )?;
            Ok(rows.iter().map(|r| version_row(r, 0)).collect())
        })
    }

    fn add_version(&self, version: &VersionRow) -> Result<bool, MetaError> {
        self.write(|tx| {
            let disk = &version.disk_id;
            if tx
                .query_opt("SELECT 1 FROM disks WHERE id = $1", &[disk])?
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
        self.with_client(|c| {
            c.query_opt(
                &format!("{VERSION_SELECT} WHERE disk_id = $1 ORDER BY seq DESC LIMIT 1"),
                &[&disk_id],
            )?
            .map(|r| version_row(&r, 0))
            .ok_or_else(|| MetaError::Damaged(format!("disk {disk_id} has no version")))
        })
    }

    fn version(&self, disk_id: &str, id: &str) -> Result<VersionRow, MetaError> {
        self.with_client(|c| {
            c.query_opt(
                &format!("{VERSION_SELECT} WHERE disk_id = $1 AND id = $2"),
                &[&disk_id, &id],
            )?
            .map(|r| version_row(&r, 0))
            .ok_or_else(|| MetaError::UnknownVersion(id.to_owned()))
        })
    }

    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError> {
        self.with_client(|c| version_exists(c, disk_id, id))
    }

    fn delete_disk(&self, disk_id: &str) -> Result<usize, MetaError> {
        self.write(|tx| {
            if let Some(live) = live_update(tx, disk_id)? {
                return Err(MetaError::DiskBusy {
                    terminal: live.terminal,
                });
            }
            tx.execute(
                "DELETE FROM upload_entries WHERE guid IN
                 (SELECT guid FROM updates WHERE disk_id = $1)",
                &[&disk_id],
            )?;
            tx.execute("DELETE FROM updates WHERE disk_id = $1", &[&disk_id])?;
            let versions = tx.execute("DELETE FROM versions WHERE disk_id = $1", &[&disk_id])?;
            tx.execute("DELETE FROM disks WHERE id = $1", &[&disk_id])?;
            Ok(usize::try_from(versions).unwrap_or(usize::MAX))
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
                "DELETE FROM versions WHERE disk_id = $1 AND id = $2",
                &[&disk_id, &id],
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
                "UPDATE versions SET comment = $3 WHERE disk_id = $1 AND id = $2",
                &[&disk_id, &id, &comment],
            )?;
            if changed == 0 {
                return Err(MetaError::UnknownVersion(id.to_owned()));
            }
            Ok(())
        })
    }
}

impl Updates for PostgresMeta {
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
                // The same terminal and user starting again take their own update back,
                // with a new secret.
                if live.terminal == session.terminal && live.user == session.user {
                    tx.execute(
                        "UPDATE updates SET cancel_secret_hash = $2 WHERE guid = $1",
                        &[&live.guid, &secret_hash],
                    )?;
                    return Ok((live, true));
                }
                return Err(MetaError::DiskBusy {
                    terminal: live.terminal,
                });
            }
            tx.execute(
                "INSERT INTO updates (guid, disk_id, base_version, terminal, user_name, state,
                                      created_at, updated_at, cancel_secret_hash)
                 VALUES ($1, $2, $3, $4, $5, 'reserved', $6, $6, $7)",
                &[
                    &guid,
                    &disk_id,
                    &booted,
                    &session.terminal,
                    &session.user,
                    &now(),
                    &secret_hash,
                ],
            )?;
            Ok((update_by_guid(tx, guid)?, false))
        })
    }

    fn cancel_with_secret(&self, guid: &str, secret_hash: &Hash) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            let held: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT cancel_secret_hash FROM updates WHERE guid = $1",
                    &[&guid],
                )?
                .and_then(|r| r.get(0));
            // An unknown update and a wrong secret are told apart by nobody.
            if held.as_deref() != Some(&secret_hash.as_bytes()[..]) {
                return Err(MetaError::BadSecret);
            }
            live_by_guid(tx, guid)?;
            tx.execute(
                "UPDATE updates SET state = 'cancelled', updated_at = $2, stopped_by = user_name
                 WHERE guid = $1",
                &[&guid, &now()],
            )?;
            end_update(tx, guid)?;
            update_by_guid(tx, guid)
        })
    }

    fn update(&self, guid: &str) -> Result<UpdateRow, MetaError> {
        self.with_client(|c| update_by_guid(c, guid))
    }

    fn updates(&self, query: &UpdateQuery) -> Result<Vec<UpdateRow>, MetaError> {
        let which = query.which;
        let filters = "($1::TEXT IS NULL OR user_name = $1) AND ($2::TEXT IS NULL OR disk_id = $2)
            AND ($3::TEXT IS NULL OR terminal = $3) AND ($4::TEXT IS NULL OR state = $4)";
        let state = which.state().map(UpdateState::as_str);
        self.with_client(|c| {
            let mut rows = Vec::new();
            if which.wants_live() && query.before.is_none() {
                // At most one per disk (the partial index `one_live_update_per_disk`).
                let live = c.query(
                    &format!(
                        "{UPDATE_SELECT} WHERE state IN ('reserved', 'uploading') AND {filters}
                         ORDER BY seq"
                    ),
                    &[&query.user, &query.disk_id, &query.terminal, &state],
                )?;
                rows.extend(live.iter().map(update_row));
            }
            if which.wants_ended() && query.limit > 0 {
                let ended = c.query(
                    &format!(
                        "{UPDATE_SELECT} WHERE state NOT IN ('reserved', 'uploading') AND {filters}
                         AND seq < $5 ORDER BY seq DESC LIMIT $6"
                    ),
                    &[
                        &query.user,
                        &query.disk_id,
                        &query.terminal,
                        &state,
                        &query.before.unwrap_or(i64::MAX),
                        &i64::try_from(query.limit).unwrap_or(i64::MAX),
                    ],
                )?;
                rows.extend(ended.iter().map(update_row));
            }
            Ok(rows)
        })
    }

    fn terminals(&self, user: Option<&str>) -> Result<Vec<UpdateRow>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                &format!(
                    "{UPDATE_SELECT} WHERE seq IN (SELECT max(seq) FROM updates
                     WHERE $1::TEXT IS NULL OR user_name = $1 GROUP BY terminal)
                     ORDER BY terminal"
                ),
                &[&user],
            )?;
            Ok(rows.iter().map(update_row).collect())
        })
    }

    fn live_update(&self, disk_id: &str) -> Result<Option<UpdateRow>, MetaError> {
        self.with_client(|c| live_update(c, disk_id))
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
                "UPDATE updates SET state = $2, updated_at = $3,
                 stopped_by = coalesce($4, stopped_by) WHERE guid = $1",
                &[&guid, &to.as_str(), &now(), &by],
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
                "UPDATE updates SET state = 'reserved', session = session + 1, updated_at = $2,
                 stopped_by = $3 WHERE guid = $1",
                &[&guid, &now(), &by],
            )?;
            tx.execute("DELETE FROM upload_entries WHERE guid = $1", &[&guid])?;
            update_by_guid(tx, guid)
        })
    }

    fn open_session(&self, guid: &str) -> Result<UpdateRow, MetaError> {
        self.write(|tx| {
            uploading(tx, guid)?;
            tx.execute(
                "UPDATE updates SET session = session + 1, updated_at = $2 WHERE guid = $1",
                &[&guid, &now()],
            )?;
            update_by_guid(tx, guid)
        })
    }

    fn record_offers(&self, guid: &str, session: u64, offers: &[Offer]) -> Result<(), MetaError> {
        // One row per block, the last offer of a block winning as on SQLite.
        let by_index: BTreeMap<u64, Option<Vec<u8>>> = offers
            .iter()
            .map(|o| (o.index, o.entry.hash().map(|h| h.as_bytes().to_vec())))
            .collect();
        let indexes: Vec<i64> = by_index.keys().map(|&i| to_i64(i)).collect();
        let hashes: Vec<Option<Vec<u8>>> = by_index.into_values().collect();
        self.write(|tx| {
            super::still_uploading(&update_by_guid(tx, guid)?, session)?;
            tx.execute(
                "INSERT INTO upload_entries (guid, block_index, hash, session)
                 SELECT $1, e.block_index, e.hash, $4
                 FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS e(block_index, hash)
                 ON CONFLICT (guid, block_index)
                 DO UPDATE SET hash = EXCLUDED.hash, session = EXCLUDED.session",
                &[&guid, &indexes, &hashes, &to_i64(session)],
            )?;
            Ok(())
        })
    }

    fn offers(&self, guid: &str, session: u64) -> Result<Vec<Offer>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                "SELECT block_index, hash FROM upload_entries WHERE guid = $1 AND session = $2
                 ORDER BY block_index",
                &[&guid, &to_i64(session)],
            )?;
            rows.iter()
                .map(|r| {
                    let hash: Option<Vec<u8>> = r.get(1);
                    let entry = match hash {
                        None => Entry::Zero,
                        Some(bytes) => Entry::Chunk(Hash::from_slice(&bytes).ok_or_else(|| {
                            MetaError::Damaged("a stored entry hash is damaged".into())
                        })?),
                    };
                    Ok(Offer {
                        index: to_u64(r.get(0)),
                        entry,
                    })
                })
                .collect()
        })
    }

    fn add_received(&self, guid: &str, chunks: u64, bytes: u64) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE updates SET chunks_received = chunks_received + $2,
                                    bytes_received = bytes_received + $3 WHERE guid = $1",
                &[&guid, &to_i64(chunks), &to_i64(bytes)],
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
        // The manifest is written from this call's thread, inside the transaction.
        let write_manifest = SendMut(write_manifest);
        self.write(move |tx| {
            let write_manifest = write_manifest;
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
            (write_manifest.0)()?;
            insert_version(tx, version)?;
            tx.execute(
                "UPDATE updates SET state = 'committed', new_version = $2, updated_at = $3
                 WHERE guid = $1",
                &[&guid, &version.id, &now()],
            )?;
            end_update(tx, guid)
        })
    }
}

/// A caller's work run on the connection's thread while the caller waits for it.
struct SendMut<'a, F: ?Sized>(&'a mut F);

#[allow(unsafe_code)]
// SAFETY: the caller blocks in `with_client` until the scoped thread that runs the work
// has ended, so the work is never used from two threads at once, and it outlives the
// thread (the scope ends before the borrow does).
unsafe impl<F: ?Sized> Send for SendMut<'_, F> {}

impl Cluster for PostgresMeta {
    fn transfer_alive(&self, url: &str, uploads: &[UploadReport]) -> Result<(), MetaError> {
        let count = uploads.len() as i64;
        self.write(|tx| {
            let at = now();
            tx.execute(
                "INSERT INTO transfer_servers (url, started_at, seen_at, uploads)
                 VALUES ($1, $2, $2, $3)
                 ON CONFLICT (url) DO UPDATE SET seen_at = EXCLUDED.seen_at,
                     uploads = EXCLUDED.uploads",
                &[&url, &at, &count],
            )?;
            tx.execute("DELETE FROM upload_reports WHERE transfer = $1", &[&url])?;
            for u in uploads {
                let n = |v: u64| v as i64;
                tx.execute(
                    "INSERT INTO upload_reports (guid, transfer, session, needed, stored, on_wire, at, job)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (guid) DO UPDATE SET transfer = EXCLUDED.transfer,
                         session = EXCLUDED.session, needed = EXCLUDED.needed,
                         stored = EXCLUDED.stored, on_wire = EXCLUDED.on_wire, at = EXCLUDED.at,
                         job = EXCLUDED.job",
                    &[
                        &u.guid,
                        &url,
                        &n(u.session),
                        &n(u.needed),
                        &n(u.stored),
                        &n(u.on_wire),
                        &at,
                        &JobReport::to_text(u.job.as_ref()),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn upload_reports(&self, since: i64) -> Result<Vec<UploadReport>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                "SELECT guid, session, needed, stored, on_wire, job FROM upload_reports
                 WHERE at >= $1 ORDER BY guid",
                &[&since],
            )?;
            Ok(rows
                .iter()
                .map(|r| UploadReport {
                    guid: r.get(0),
                    session: r.get::<_, i64>(1) as u64,
                    needed: r.get::<_, i64>(2) as u64,
                    stored: r.get::<_, i64>(3) as u64,
                    on_wire: r.get::<_, i64>(4) as u64,
                    job: JobReport::from_text(r.get(5)),
                })
                .collect())
        })
    }

    fn transfer_gone(&self, url: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM transfer_servers WHERE url = $1", &[&url])?;
            tx.execute("DELETE FROM upload_reports WHERE transfer = $1", &[&url])?;
            Ok(())
        })
    }

    fn transfer_servers(&self) -> Result<Vec<TransferRow>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                "SELECT url, started_at, seen_at, uploads,
                     (SELECT count(*) FROM updates WHERE carrier = url
                         AND state IN ('reserved', 'uploading'))
                 FROM transfer_servers ORDER BY url",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| TransferRow {
                    url: r.get(0),
                    started_at: r.get(1),
                    seen_at: r.get(2),
                    uploads: r.get::<_, i64>(3) as u64,
                    carried: r.get::<_, i64>(4) as u64,
                })
                .collect())
        })
    }

    fn carrier(&self, guid: &str) -> Result<Option<String>, MetaError> {
        self.with_client(|c| {
            Ok(
                c.query_opt("SELECT carrier FROM updates WHERE guid = $1", &[&guid])?
                    .and_then(|r| r.get(0)),
            )
        })
    }

    fn set_carrier(&self, guid: &str, url: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE updates SET carrier = $2 WHERE guid = $1",
                &[&guid, &url],
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
            tx.execute("DELETE FROM store_leases WHERE expires_at < $1", &[&now()])?;
            let conflicts: i64 = tx
                .query_one(
                    "SELECT count(*) FROM store_leases WHERE holder <> $1 AND ($2 OR exclusive)",
                    &[&holder, &exclusive],
                )?
                .get(0);
            if conflicts > 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO store_leases (holder, exclusive, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (holder) DO UPDATE SET exclusive = EXCLUDED.exclusive,
                     expires_at = EXCLUDED.expires_at",
                &[&holder, &exclusive, &expires_at],
            )?;
            Ok(true)
        })
    }

    fn drop_lease(&self, holder: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM store_leases WHERE holder = $1", &[&holder])?;
            Ok(())
        })
    }
}

impl Upkeep for PostgresMeta {
    fn record_upkeep(&self, kind: &str, outcome: &str) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO upkeep_runs (kind, at, outcome) VALUES ($1, $2, $3)
                 ON CONFLICT (kind) DO UPDATE SET at = EXCLUDED.at, outcome = EXCLUDED.outcome",
                &[&kind, &now(), &outcome],
            )?;
            Ok(())
        })
    }

    fn last_upkeep(&self, kind: &str) -> Result<Option<(i64, String)>, MetaError> {
        self.with_client(|c| {
            Ok(c.query_opt(
                "SELECT at, outcome FROM upkeep_runs WHERE kind = $1",
                &[&kind],
            )?
            .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn versions_since(&self, seq: i64) -> Result<Vec<(i64, VersionRow)>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                &format!(
                    "SELECT seq, {} WHERE seq > $1 ORDER BY seq",
                    VERSION_SELECT.trim_start_matches("SELECT ")
                ),
                &[&seq],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), version_row(r, 1))).collect())
        })
    }

    fn live_hashes(&self) -> Result<Vec<Hash>, MetaError> {
        self.with_client(|c| {
            let rows = c.query(
                "SELECT DISTINCT e.hash FROM upload_entries e JOIN updates u ON u.guid = e.guid
                 WHERE u.state IN ('reserved', 'uploading') AND e.hash IS NOT NULL",
                &[],
            )?;
            Ok(rows
                .iter()
                .filter_map(|r| Hash::from_slice(&r.get::<_, Vec<u8>>(0)))
                .collect())
        })
    }

    fn prune(&self, before: i64) -> Result<usize, MetaError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tokens WHERE expires_at < $1", &[&now()])?;
            tx.execute(
                "DELETE FROM upload_entries WHERE guid IN (SELECT guid FROM updates
                 WHERE state NOT IN ('reserved', 'uploading') AND updated_at < $1)",
                &[&before],
            )?;
            let pruned = tx.execute(
                "DELETE FROM updates WHERE state NOT IN ('reserved', 'uploading')
                 AND updated_at < $1",
                &[&before],
            )?;
            Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
        })
    }

    fn exclusive_dyn(
        &self,
        work: &mut dyn FnMut(&dyn LockedMeta) -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        let work = SendMut(work);
        self.write(move |tx| {
            let work = work;
            (work.0)(&Locked(std::cell::RefCell::new(tx)))
        })
    }
}

const DISK_SELECT: &str = "SELECT id, name, size, block_size, created_at FROM disks";
const VERSION_SELECT: &str = "SELECT disk_id, id, parent, comment, user_name, terminal,
    created_at, root, blocks_changed, bytes_stored FROM versions";
const UPDATE_SELECT: &str = "SELECT guid, disk_id, base_version, terminal, user_name, state,
    new_version, chunks_received, bytes_received, session, seq, created_at, updated_at,
    carrier, stopped_by FROM updates";

fn disk_row(r: &Row) -> DiskRow {
    DiskRow {
        id: r.get(0),
        name: r.get(1),
        size: to_u64(r.get(2)),
        block_size: u32::try_from(r.get::<_, i64>(3)).unwrap_or(0),
        created_at: r.get(4),
    }
}

/// A version row whose columns start at `at`.
fn version_row(r: &Row, at: usize) -> VersionRow {
    let root: Vec<u8> = r.get(at + 7);
    VersionRow {
        disk_id: r.get(at),
        id: r.get(at + 1),
        parent: r.get(at + 2),
        comment: r.get(at + 3),
        user: r.get(at + 4),
        terminal: r.get(at + 5),
        created_at: r.get(at + 6),
        root: Hash::from_slice(&root).unwrap_or(Hash::from_bytes([0; 32])),
        blocks_changed: to_u64(r.get(at + 8)),
        bytes_stored: to_u64(r.get(at + 9)),
    }
}

fn update_row(r: &Row) -> UpdateRow {
    UpdateRow {
        guid: r.get(0),
        disk_id: r.get(1),
        base_version: r.get(2),
        terminal: r.get(3),
        user: r.get(4),
        state: UpdateState::parse(r.get(5)),
        new_version: r.get(6),
        chunks_received: to_u64(r.get(7)),
        bytes_received: to_u64(r.get(8)),
        session: to_u64(r.get(9)),
        seq: r.get(10),
        started_at: r.get(11),
        changed_at: r.get(12),
        carrier: r.get(13),
        stopped_by: r.get(14),
    }
}

/// The database under its write lock, for `exclusive`.
struct Locked<'a, 'b>(std::cell::RefCell<&'a mut Transaction<'b>>);

impl LockedMeta for Locked<'_, '_> {
    fn live_update_holds(&self, hash: &Hash) -> Result<bool, MetaError> {
        Ok(self
            .0
            .borrow_mut()
            .query_opt(
                "SELECT 1 FROM upload_entries e JOIN updates u ON u.guid = e.guid
                 WHERE e.hash = $1 AND u.state IN ('reserved', 'uploading') LIMIT 1",
                &[&&hash.as_bytes()[..]],
            )?
            .is_some())
    }

    fn newest_seq(&self) -> Result<i64, MetaError> {
        Ok(self
            .0
            .borrow_mut()
            .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM versions", &[])?
            .get(0))
    }

    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError> {
        version_exists(&mut **self.0.borrow_mut(), disk_id, id)
    }

    fn disk_exists(&self, disk_id: &str) -> Result<bool, MetaError> {
        Ok(self
            .0
            .borrow_mut()
            .query_opt("SELECT 1 FROM disks WHERE id = $1", &[&disk_id])?
            .is_some())
    }
}

fn insert_version(c: &mut impl GenericClient, v: &VersionRow) -> Result<(), MetaError> {
    c.execute(
        "INSERT INTO versions (disk_id, id, parent, comment, user_name, terminal, created_at,
                               root, blocks_changed, bytes_stored)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &v.disk_id,
            &v.id,
            &v.parent,
            &v.comment,
            &v.user,
            &v.terminal,
            &v.created_at,
            &&v.root.as_bytes()[..],
            &to_i64(v.blocks_changed),
            &to_i64(v.bytes_stored),
        ],
    )?;
    Ok(())
}

/// What goes when an update ends: its offered entries and its cancel secret.
fn end_update(c: &mut impl GenericClient, guid: &str) -> Result<(), MetaError> {
    c.execute("DELETE FROM upload_entries WHERE guid = $1", &[&guid])?;
    c.execute(
        "UPDATE updates SET cancel_secret_hash = NULL WHERE guid = $1",
        &[&guid],
    )?;
    Ok(())
}

/// An update that must be live (reserved or uploading).
fn live_by_guid(c: &mut impl GenericClient, guid: &str) -> Result<UpdateRow, MetaError> {
    let row = update_by_guid(c, guid)?;
    if !row.state.is_live() {
        return Err(MetaError::UpdateNotLive {
            guid: guid.to_owned(),
            state: row.state,
        });
    }
    Ok(row)
}

/// An update that must be uploading; one reserved again was aborted by an admin.
fn uploading(c: &mut impl GenericClient, guid: &str) -> Result<UpdateRow, MetaError> {
    let row = update_by_guid(c, guid)?;
    super::must_be_uploading(&row)?;
    Ok(row)
}

fn update_by_guid(c: &mut impl GenericClient, guid: &str) -> Result<UpdateRow, MetaError> {
    c.query_opt(&format!("{UPDATE_SELECT} WHERE guid = $1"), &[&guid])?
        .map(|r| update_row(&r))
        .ok_or_else(|| MetaError::UnknownUpdate(guid.to_owned()))
}

/// The id of a disk's latest version.
fn latest_id(c: &mut impl GenericClient, disk_id: &str) -> Result<String, MetaError> {
    c.query_opt(
        "SELECT id FROM versions WHERE disk_id = $1 ORDER BY seq DESC LIMIT 1",
        &[&disk_id],
    )?
    .map(|r| r.get(0))
    .ok_or_else(|| MetaError::UnknownDisk(disk_id.to_owned()))
}

fn version_exists(c: &mut impl GenericClient, disk_id: &str, id: &str) -> Result<bool, MetaError> {
    Ok(c.query_opt(
        "SELECT 1 FROM versions WHERE disk_id = $1 AND id = $2",
        &[&disk_id, &id],
    )?
    .is_some())
}

fn live_update(c: &mut impl GenericClient, disk_id: &str) -> Result<Option<UpdateRow>, MetaError> {
    Ok(c.query_opt(
        &format!("{UPDATE_SELECT} WHERE disk_id = $1 AND state IN ('reserved', 'uploading')"),
        &[&disk_id],
    )?
    .map(|r| update_row(&r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::contract;

    /// A fresh schema of the test database for each instance, found through
    /// `HOTATE_TEST_POSTGRES` (tests/run starts a throwaway cluster and sets it).
    fn test_database() -> Option<String> {
        let url = std::env::var("HOTATE_TEST_POSTGRES").ok();
        hotate_tests::needs(
            "postgres_keeps_the_metadata_contract",
            "a PostgreSQL server (tests/run starts one; or set HOTATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB)",
            url.is_some(),
        )
        .then_some(url)
        .flatten()
    }

    /// A URL whose connections work in a new, empty schema.
    fn fresh_schema(url: &str) -> String {
        let name = format!("hotate_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PostgresMeta::connect(url).unwrap();
        admin
            .with_client(|c| Ok(c.batch_execute(&format!("CREATE SCHEMA {name}"))?))
            .unwrap();
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}options=-c%20search_path%3D{name}")
    }

    /// A database whose default lets commits return before their WAL is flushed still
    /// gets durable commits from Hotate's connections.
    #[test]
    fn commits_are_durable_whatever_the_database_default() {
        let Some(url) = test_database() else { return };
        let lax = format!("{}%20-c%20synchronous_commit%3Doff", fresh_schema(&url));
        let meta = PostgresMeta::open(&lax).unwrap();
        let setting = meta
            .with_client(|c| {
                Ok(c.query_one("SHOW synchronous_commit", &[])?
                    .get::<_, String>(0))
            })
            .unwrap();
        assert_eq!(setting, "on");
    }

    /// Servers on one database but each with a data dir of its own: an import's lease
    /// keeps `store gc` of another server from the chunks it writes (a lock file in a
    /// data dir would not), and gc's keeps the next import waiting.
    #[test]
    fn an_import_on_one_server_holds_gc_on_another() {
        let Some(url) = test_database() else { return };
        let url = fresh_schema(&url);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let [importer, collector] = dirs.each_ref().map(|dir| {
            crate::data::DataDir::open_at(&crate::data::Places {
                data: dir.path().to_owned(),
                meta: Some(url.clone()),
                store: None,
            })
            .unwrap()
        });
        let import = importer
            .lock_store(false)
            .unwrap()
            .expect("an import's lease");
        assert!(
            collector.lock_store(true).unwrap().is_none(),
            "gc elsewhere waits for the import"
        );
        drop(import);
        let gc = collector.lock_store(true).unwrap().expect("gc's lease");
        let waiting = std::thread::scope(|s| {
            let import = s.spawn(|| importer.lock_store(false).unwrap().is_some());
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let waited = !import.is_finished();
            drop(gc);
            (waited, import.join().unwrap())
        });
        assert_eq!(
            waiting,
            (true, true),
            "the import waited for gc, then went on"
        );
    }

    #[test]
    fn postgres_keeps_the_metadata_contract() {
        let Some(url) = test_database() else { return };
        contract::check(&|| Box::new(PostgresMeta::open(&fresh_schema(&url)).unwrap()));
    }

    /// Servers sharing one database: checks then inserts from many connections at once
    /// give one winner and the others the refusal SQLite's single writer would give, and
    /// a commit waits for `store gc`'s write lock.
    #[test]
    fn servers_sharing_the_database_see_one_writer_at_a_time() {
        let Some(url) = test_database() else { return };
        let url = fresh_schema(&url);
        let servers: Vec<PostgresMeta> =
            (0..6).map(|_| PostgresMeta::open(&url).unwrap()).collect();
        let at_once = |work: &(dyn Fn(usize, &PostgresMeta) -> Result<(), MetaError> + Sync)| {
            let barrier = std::sync::Barrier::new(servers.len());
            std::thread::scope(|s| {
                let runs: Vec<_> = servers
                    .iter()
                    .enumerate()
                    .map(|(i, meta)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            work(i, meta)
                        })
                    })
                    .collect();
                runs.into_iter()
                    .map(|r| r.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let added = at_once(&|_, meta| meta.add_user("u", "x", None).map(drop));
        assert_eq!(added.iter().filter(|r| r.is_ok()).count(), 1, "{added:?}");
        assert!(
            added
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(MetaError::UserExists(_))))
        );
        assert_eq!(
            servers[0].role("u").unwrap(),
            Some(Role::Admin),
            "the first user"
        );
        let created = at_once(&|i, meta| {
            let disk = DiskRow {
                id: format!("d{i}"),
                name: "disk".into(),
                size: 1,
                block_size: 1 << 16,
                created_at: 0,
            };
            let first = VersionRow {
                disk_id: disk.id.clone(),
                ..contract::version("v1", None)
            };
            meta.create_disk(&disk, &first)
        });
        assert_eq!(
            created.iter().filter(|r| r.is_ok()).count(),
            1,
            "{created:?}"
        );
        assert!(
            created
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(MetaError::DiskExists(_))))
        );
        let disk = servers[0].disk("disk").unwrap().id;
        let started = at_once(&|i, meta| {
            let session = Session {
                user: "u".into(),
                terminal: format!("PC-{i}"),
                role: Role::Admin,
            };
            meta.start_update(&disk, "v1", &session, &format!("g{i}"), &Hash::of(b"s"))
                .map(drop)
        });
        assert_eq!(
            started.iter().filter(|r| r.is_ok()).count(),
            1,
            "{started:?}"
        );
        assert!(
            started
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(MetaError::DiskBusy { .. })))
        );

        // A commit from one server waits while another holds the write lock, and takes a
        // `seq` after what the lock's holder saw.
        let guid = servers[0].live_update(&disk).unwrap().unwrap().guid;
        servers[0]
            .set_state(&guid, UpdateState::Uploading, None)
            .unwrap();
        let session = servers[0].open_session(&guid).unwrap().session;
        let (gc_server, committer): (&dyn super::super::Metadata, &dyn super::super::Metadata) =
            (&servers[1], &servers[2]);
        let (locked, committed) = std::thread::scope(|s| {
            let (held, holding) = std::sync::mpsc::channel();
            let gc = s.spawn(move || {
                let meta = gc_server;
                meta.exclusive(|db| {
                    let seq = db.newest_seq()?;
                    held.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    Ok::<_, MetaError>((seq, std::time::Instant::now()))
                })
                .unwrap()
            });
            holding.recv().unwrap();
            let meta = committer;
            let v2 = VersionRow {
                disk_id: disk.clone(),
                ..contract::version("v2", Some("v1"))
            };
            meta.commit(&guid, session, &v2, || Ok::<_, MetaError>(()))
                .unwrap();
            (gc.join().unwrap(), std::time::Instant::now())
        });
        let (seen, released) = locked;
        assert!(committed >= released, "the commit waited for the lock");
        let since = servers[3].versions_since(seen).unwrap();
        assert_eq!(
            since.len(),
            1,
            "the new version comes after the lock's view"
        );
        assert_eq!(since[0].1.id, "v2");
    }
}
