//! Server metadata: users, tokens, disks, versions, updates and the entries offered by
//! uploads, behind the [`Metadata`] trait with its own [`MetaError`]. [`SqliteMeta`] (in
//! the data dir, the default) and [`PostgresMeta`] (`--meta postgres://…`, shared by the
//! servers of a site that outgrows one machine) implement it and pass the same contract
//! tests. Calls block: async callers use `spawn_blocking`.
//!
//! Every implementation keeps two rules: a change that returns `Ok` is durable (never
//! acknowledged from a cache that a power cut empties), and after a failed write nothing
//! more is acknowledged until the store has proven what it holds durable again
//! ([`MetaError::Unproven`] meanwhile).

#[cfg(test)]
pub mod contract;
mod postgres;
mod sqlite;

use std::time::{SystemTime, UNIX_EPOCH};

use hotate_engine::{Hash, Offer};

pub use postgres::PostgresMeta;
pub use sqlite::SqliteMeta;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRow {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub disk_id: String,
    pub id: String,
    pub parent: Option<String>,
    pub comment: String,
    pub user: String,
    pub terminal: String,
    pub created_at: i64,
    pub root: Hash,
    pub blocks_changed: u64,
    pub bytes_stored: u64,
}

/// The life of an update: `reserved → uploading → committed`, or `cancelled`/`aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    Reserved,
    Uploading,
    Committed,
    Cancelled,
    Aborted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Uploading => "uploading",
            Self::Committed => "committed",
            Self::Cancelled => "cancelled",
            Self::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "reserved" => Self::Reserved,
            "uploading" => Self::Uploading,
            "committed" => Self::Committed,
            "cancelled" => Self::Cancelled,
            _ => Self::Aborted,
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, Self::Reserved | Self::Uploading)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRow {
    pub guid: String,
    pub disk_id: String,
    pub base_version: String,
    pub terminal: String,
    pub user: String,
    pub state: UpdateState,
    pub new_version: Option<String>,
    pub chunks_received: u64,
    pub bytes_received: u64,
    /// The upload stream session that holds the update now.
    pub session: u64,
    /// Its place in the order updates were started in: a listing's page ends at one.
    pub seq: i64,
    /// When it was started and last changed state (the end, once ended), Unix seconds.
    pub started_at: i64,
    pub changed_at: i64,
    /// The transfer server its upload was handed to, in a cluster (`serve --role`).
    pub carrier: Option<String>,
    /// Who last cancelled it or aborted its upload.
    pub stopped_by: Option<String>,
}

/// Which updates a listing holds: the live ones (at most one per disk), oldest first,
/// then ended ones, newest first, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateQuery {
    pub which: WhichUpdates,
    pub user: Option<String>,
    pub disk_id: Option<String>,
    pub terminal: Option<String>,
    /// Only ended updates started before this `seq` (the last one of the page before).
    pub before: Option<i64>,
    /// Ended updates at most; the live ones are all listed.
    pub limit: usize,
}

impl UpdateQuery {
    /// Every update, live or ended.
    pub fn all() -> Self {
        Self {
            which: WhichUpdates::All,
            user: None,
            disk_id: None,
            terminal: None,
            before: None,
            limit: usize::MAX,
        }
    }

    /// The live updates only.
    pub fn live() -> Self {
        Self {
            which: WhichUpdates::Live,
            ..Self::all()
        }
    }
}

/// The states a listing holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichUpdates {
    All,
    Live,
    Ended,
    In(UpdateState),
}

impl WhichUpdates {
    /// `live`, `ended`, or one state's name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "" | "all" => Self::All,
            "live" => Self::Live,
            "ended" => Self::Ended,
            "reserved" => Self::In(UpdateState::Reserved),
            "uploading" => Self::In(UpdateState::Uploading),
            "committed" => Self::In(UpdateState::Committed),
            "cancelled" => Self::In(UpdateState::Cancelled),
            "aborted" => Self::In(UpdateState::Aborted),
            _ => return None,
        })
    }

    pub fn wants_live(self) -> bool {
        match self {
            Self::All | Self::Live => true,
            Self::Ended => false,
            Self::In(state) => state.is_live(),
        }
    }

    pub fn wants_ended(self) -> bool {
        match self {
            Self::All | Self::Ended => true,
            Self::Live => false,
            Self::In(state) => !state.is_live(),
        }
    }

    /// The one state asked for, if one.
    pub fn state(self) -> Option<UpdateState> {
        match self {
            Self::In(state) => Some(state),
            _ => None,
        }
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Starts, finishes and cancels its own updates; reads disks.
    Operator,
    /// Also aborts any update and manages.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parses `admin` or `operator`.
    ///
    /// # Errors
    /// `BadRequest` for anything else.
    pub fn parse(text: &str) -> Result<Self, MetaError> {
        match text {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            other => Err(MetaError::BadRequest(format!(
                "unknown role {other:?}: use admin or operator"
            ))),
        }
    }
}

/// A user as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// A logged-in caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub terminal: String,
    pub role: Role,
}

/// What the metadata refuses, or fails at.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("unknown user {0}: `hotate-server user list` shows the users")]
    UnknownUser(String),
    #[error("user {0} already exists: `hotate-server user passwd` sets a password")]
    UserExists(String),
    #[error("unknown disk {0}: `hotate-server disk list` shows the disks")]
    UnknownDisk(String),
    #[error("a disk named {0} already exists")]
    DiskExists(String),
    #[error("unknown version {0}")]
    UnknownVersion(String),
    #[error(
        "cannot delete version {0}: it is the disk's latest version, which terminals boot (delete it once a newer version exists)"
    )]
    VersionIsLatest(String),
    #[error(
        "cannot delete version {version}: it is the base of the update in progress from terminal {terminal} (finish or cancel that update first)"
    )]
    VersionIsBase { version: String, terminal: String },
    #[error("unknown update {0}: it may have been aborted; start a new update")]
    UnknownUpdate(String),
    #[error("the terminal did not boot the latest version (latest={latest}, booted={booted})")]
    NotLatest { latest: String, booted: String },
    #[error("terminal {terminal} is already updating this disk; cancel that update first")]
    DiskBusy { terminal: String },
    #[error("update {guid} is {}: start a new update", state.as_str())]
    UpdateNotLive { guid: String, state: UpdateState },
    #[error("the update was {} on the server while this upload ran", .0.as_str())]
    UpdateEnded(UpdateState),
    #[error("another finish took over this upload")]
    TakenOver,
    #[error("the cancel secret does not match this update")]
    BadSecret,
    /// An administrator's abort (「更新中断」) discarded the upload; the update is
    /// reserved again, as after `update start`.
    #[error(
        "an administrator interrupted this upload (更新中断); the update is kept: run \
         `update finish` again to start the upload over"
    )]
    UploadAborted,
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The work given to `exclusive` or `commit` failed:
    /// nothing was changed, and the caller has the work's own error.
    #[error("the transaction was abandoned")]
    Abandoned,
    #[error("metadata failure: {0}")]
    Damaged(String),
    /// A write failed because the disk did: nothing of it was recorded.
    #[error(
        "the server's disk failed a write ({0}); nothing of it was recorded and what was \
         recorded before is kept: try again once the server's disk is healthy"
    )]
    DiskFailed(String),
    /// After a failed write, durability could not be proven again yet.
    #[error(
        "the server's disk failed a write earlier and nothing more is recorded until the \
         metadata is proven durable again ({0}): try again once the server's disk is healthy"
    )]
    Unproven(String),
    /// The database failed otherwise; the backend's own error, kept for the log (and
    /// for the backend to look into).
    #[error("metadata failure: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Whether an upload may open: the update is uploading (begun). One reserved again was
/// aborted by an admin after it began.
///
/// # Errors
/// `UploadAborted`, or `UpdateNotLive` when it ended.
pub fn must_be_uploading(update: &UpdateRow) -> Result<(), MetaError> {
    match update.state {
        UpdateState::Uploading => Ok(()),
        UpdateState::Reserved => Err(MetaError::UploadAborted),
        state => Err(MetaError::UpdateNotLive {
            guid: update.guid.clone(),
            state,
        }),
    }
}

/// Whether an upload stream of `session` may go on with `update` as it is now: refused
/// when an admin aborted it (reserved again), it ended, or another session took over.
///
/// # Errors
/// `UploadAborted`, `UpdateEnded` or `TakenOver`.
pub fn still_uploading(update: &UpdateRow, session: u64) -> Result<(), MetaError> {
    match update.state {
        UpdateState::Reserved => Err(MetaError::UploadAborted),
        UpdateState::Uploading if update.session == session => Ok(()),
        UpdateState::Uploading => Err(MetaError::TakenOver),
        state => Err(MetaError::UpdateEnded(state)),
    }
}

/// Users and their tokens.
pub trait Accounts {
    /// Adds a user; without a role the first user is an admin, later ones operators.
    /// Returns the role given.
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Option<Role>,
    ) -> Result<Role, MetaError>;
    /// Sets a user's password and ends its sessions.
    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), MetaError>;
    /// Changes a user's role; its sessions take the new role at once.
    fn set_role(&self, name: &str, role: Role) -> Result<(), MetaError>;
    /// Deletes a user and its sessions; versions and updates keep its name.
    fn delete_user(&self, name: &str) -> Result<(), MetaError>;
    /// Every user, by name.
    fn users(&self) -> Result<Vec<UserRow>, MetaError>;
    /// A user's stored password hash (argon2, PHC string), if the user exists.
    fn password_hash(&self, name: &str) -> Result<Option<String>, MetaError>;
    /// Records a token's hash for a session, until `expires_at` (Unix seconds); expired
    /// tokens go.
    fn add_token(
        &self,
        token_hash: &Hash,
        session: &Session,
        expires_at: i64,
    ) -> Result<(), MetaError>;
    /// Ends a token's session (a logout).
    fn remove_token(&self, token_hash: &Hash) -> Result<(), MetaError>;
    /// The session of an unexpired token, with its user's role now.
    fn session(&self, token_hash: &Hash) -> Result<Option<Session>, MetaError>;
    /// A user's role, if the user exists.
    fn role(&self, name: &str) -> Result<Option<Role>, MetaError>;
}

/// Disks and their versions.
pub trait Catalog {
    /// A disk by UUID or name.
    fn disk(&self, id_or_name: &str) -> Result<DiskRow, MetaError>;
    /// Every disk, by name.
    fn disks(&self) -> Result<Vec<DiskRow>, MetaError>;
    /// Creates a disk and its first version in one transaction.
    fn create_disk(&self, disk: &DiskRow, first: &VersionRow) -> Result<(), MetaError>;
    /// Versions of a disk, oldest first.
    fn versions(&self, disk_id: &str) -> Result<Vec<VersionRow>, MetaError>;
    /// Adds a version of an existing disk as it is (a migration copies versions oldest
    /// first); false when the disk has it already.
    fn add_version(&self, version: &VersionRow) -> Result<bool, MetaError>;
    /// A disk's newest version.
    fn latest_version(&self, disk_id: &str) -> Result<VersionRow, MetaError>;
    /// One version of a disk.
    fn version(&self, disk_id: &str, id: &str) -> Result<VersionRow, MetaError>;
    /// Whether a disk has this version.
    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError>;
    /// Deletes a disk with its versions and updates; refused while an update is live.
    fn delete_disk(&self, disk_id: &str) -> Result<usize, MetaError>;
    /// Deletes one version; refused for the latest and for the base of a live update.
    fn delete_version(&self, disk_id: &str, id: &str) -> Result<(), MetaError>;
    /// Replaces a version's comment.
    fn set_comment(&self, disk_id: &str, id: &str, comment: &str) -> Result<(), MetaError>;
}

/// Updates and their uploads: reserving a disk, sessions, offers, the commit.
pub trait Updates {
    /// Reserves a disk: refused unless `booted` is the latest version and no live update
    /// of another terminal or user holds the disk. Returns the update and whether it is
    /// the caller's own live update, adopted rather than created.
    /// `secret_hash` is the hash of the secret that lets the terminal cancel this update
    /// without a login (replacing the old one of an adopted update).
    fn start_update(
        &self,
        disk_id: &str,
        booted: &str,
        session: &Session,
        guid: &str,
        secret_hash: &Hash,
    ) -> Result<(UpdateRow, bool), MetaError>;
    /// A terminal's cancel of its own live update with the secret its start received
    /// (compared by hash); refused alike for an unknown update and a wrong secret.
    fn cancel_with_secret(&self, guid: &str, secret_hash: &Hash) -> Result<UpdateRow, MetaError>;
    /// One update, by its DataWriteGuid.
    fn update(&self, guid: &str) -> Result<UpdateRow, MetaError>;
    /// The updates `query` asks for: the live ones oldest first, then ended ones newest
    /// first, at most `query.limit` of them.
    fn updates(&self, query: &UpdateQuery) -> Result<Vec<UpdateRow>, MetaError>;
    /// Each terminal's latest update (of `user`'s updates, when given), by terminal name.
    fn terminals(&self, user: Option<&str>) -> Result<Vec<UpdateRow>, MetaError>;
    /// The reserved or uploading update of a disk, if any.
    fn live_update(&self, disk_id: &str) -> Result<Option<UpdateRow>, MetaError>;
    /// Moves a live update to `to`, recording `by` as who stopped it when given; refused
    /// when it is no longer live.
    fn set_state(
        &self,
        guid: &str,
        to: UpdateState,
        by: Option<&str>,
    ) -> Result<UpdateRow, MetaError>;
    /// An admin's abort (「更新中断」): a live update goes back to `reserved`, as after
    /// `update start`; its upload is discarded (its entries dropped, its session moved
    /// on, so a stream or a commit of it is refused with `UploadAborted`). What it stored
    /// is left to dedup and gc. Refused when the update is no longer live.
    /// `by` is recorded as who stopped it.
    fn abort_upload(&self, guid: &str, by: &str) -> Result<UpdateRow, MetaError>;
    /// Opens a new session of an uploading update; returns it with the session number.
    /// Entries offered by earlier sessions stay (their chunks stay referenced) but no
    /// longer count towards the manifest.
    fn open_session(&self, guid: &str) -> Result<UpdateRow, MetaError>;
    /// Records entries offered by `session` in one transaction, refused when the update
    /// ended or another session took it over.
    fn record_offers(&self, guid: &str, session: u64, offers: &[Offer]) -> Result<(), MetaError>;
    /// The entries offered by one session of an upload, by block index.
    fn offers(&self, guid: &str, session: u64) -> Result<Vec<Offer>, MetaError>;
    /// Counts chunks and wire bytes an upload stored (for display).
    fn add_received(&self, guid: &str, chunks: u64, bytes: u64) -> Result<(), MetaError>;
    /// Commits an uploading update as `version`, atomically. `write_manifest` runs inside
    /// the transaction, so that `store gc` (which removes manifests no version names under
    /// the same lock) never sees the manifest without its row, nor the row without it.
    fn commit_update(
        &self,
        guid: &str,
        session: u64,
        version: &VersionRow,
        write_manifest: &mut dyn FnMut() -> Result<(), MetaError>,
    ) -> Result<(), MetaError>;
}

/// What the store's upkeep needs: its record, the versions and live uploads it must
/// keep, pruning, and the write lock `store gc` holds.
pub trait Upkeep {
    /// Records that an upkeep command (`verify`, `gc`) ran, and what it found.
    fn record_upkeep(&self, kind: &str, outcome: &str) -> Result<(), MetaError>;
    /// The last run of an upkeep command: when, and what it found.
    fn last_upkeep(&self, kind: &str) -> Result<Option<(i64, String)>, MetaError>;
    /// Versions committed after `seq` (0: all), each with its sequence number, oldest
    /// first.
    fn versions_since(&self, seq: i64) -> Result<Vec<(i64, VersionRow)>, MetaError>;
    /// Hashes offered by live updates, in any of their sessions: chunks that an upload
    /// in progress has stored or counts on.
    fn live_hashes(&self) -> Result<Vec<Hash>, MetaError>;
    /// Deletes expired tokens and updates that ended before `before`; returns how many
    /// updates went.
    fn prune(&self, before: i64) -> Result<usize, MetaError>;
    /// Runs `work` holding the database's write lock (an immediate transaction that
    /// changes nothing unless `work` does): uploads cannot record offers nor commit
    /// versions meanwhile. `exclusive` on `dyn Metadata` is the typed form.
    fn exclusive_dyn(
        &self,
        work: &mut dyn FnMut(&dyn LockedMeta) -> Result<(), MetaError>,
    ) -> Result<(), MetaError>;
}

/// A transfer server registered in the metadata (`serve --role transfer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    /// Where terminals reach it (`--advertise-transfer`).
    pub url: String,
    /// When it registered and when it last said it was alive (Unix seconds).
    pub started_at: i64,
    pub seen_at: i64,
    /// Upload streams it carried at its last heartbeat.
    pub uploads: u64,
    /// Live updates handed to it.
    pub carried: u64,
}

/// An open upload stream's progress as a transfer server reports it, for the control
/// servers' consoles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub guid: String,
    pub session: u64,
    /// Bytes of block content asked for, stored, and received on the wire.
    pub needed: u64,
    pub stored: u64,
    pub on_wire: u64,
    /// The terminal's own account of the whole finish, if it sends one.
    pub job: Option<JobReport>,
}

/// A terminal's account of its whole finish, as its progress line shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobReport {
    /// 0 to 99: the share of the finish's time gone.
    pub percent: u64,
    /// The bytes the line counts (the differential disk's data).
    pub total: u64,
    /// Seconds left, once known.
    pub eta_secs: Option<u64>,
    /// Encoded bytes per second stored, recently.
    pub rate: u64,
}

impl JobReport {
    /// As the metadata keeps it (JSON).
    pub fn to_text(report: Option<&Self>) -> Option<String> {
        report.and_then(|r| serde_json::to_string(r).ok())
    }

    pub fn from_text(text: Option<String>) -> Option<Self> {
        text.and_then(|t| serde_json::from_str(&t).ok())
    }
}

/// Several server processes on one database: the transfer servers (and the progress of
/// the uploads they carry) and which one carries each upload, and the leases that keep `store gc` from deleting what an
/// import or a migration is writing.
pub trait Cluster {
    /// Records that the transfer server at `url` is alive and carries these upload
    /// streams (replacing what it reported before).
    fn transfer_alive(&self, url: &str, uploads: &[UploadReport]) -> Result<(), MetaError>;
    /// Removes a transfer server that stops, with its reports.
    fn transfer_gone(&self, url: &str) -> Result<(), MetaError>;
    /// The uploads the transfer servers heard from since `since` (Unix seconds) carry.
    fn upload_reports(&self, since: i64) -> Result<Vec<UploadReport>, MetaError>;
    /// Every registered transfer server, by URL, with the live updates handed to it.
    fn transfer_servers(&self) -> Result<Vec<TransferRow>, MetaError>;
    /// The transfer server an update's upload was handed to, if any.
    fn carrier(&self, guid: &str) -> Result<Option<String>, MetaError>;
    /// Hands an update's upload to the transfer server at `url`.
    fn set_carrier(&self, guid: &str, url: &str) -> Result<(), MetaError>;
    /// Takes a lease on the store for `holder` until `expires_at` (Unix seconds):
    /// shared (imports, migrations) or exclusive (gc). False when a lease of another
    /// holder that has not expired conflicts (any, for an exclusive one; an exclusive
    /// one, for a shared one). Taking it again renews it.
    fn take_lease(&self, holder: &str, exclusive: bool, expires_at: i64)
    -> Result<bool, MetaError>;
    /// Gives a lease back.
    fn drop_lease(&self, holder: &str) -> Result<(), MetaError>;
}

/// The metadata database: every concern, as one object the server holds. A backend
/// implements the five traits and passes the contract tests (`meta::contract`).
pub trait Metadata:
    Accounts + Catalog + Updates + Upkeep + Cluster + Send + Sync + std::fmt::Debug
{
}

impl<T: Accounts + Catalog + Updates + Upkeep + Cluster + Send + Sync + std::fmt::Debug> Metadata
    for T
{
}

/// The database under its write lock, for `exclusive`.
pub trait LockedMeta {
    /// Whether a live update has offered this hash (in any session).
    fn live_update_holds(&self, hash: &Hash) -> Result<bool, MetaError>;
    /// The sequence number of the newest version of any disk (0 when none).
    fn newest_seq(&self) -> Result<i64, MetaError>;
    /// Whether a disk has this version.
    fn version_exists(&self, disk_id: &str, id: &str) -> Result<bool, MetaError>;
    /// Whether the disk exists.
    fn disk_exists(&self, disk_id: &str) -> Result<bool, MetaError>;
}

impl dyn Metadata + '_ {
    /// Runs `work` holding the database's write lock; its error, if any, is returned as
    /// it was and nothing is changed.
    ///
    /// # Errors
    /// The work's error, or the database's.
    pub fn exclusive<T, E: From<MetaError>>(
        &self,
        work: impl FnOnce(&dyn LockedMeta) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut work = Some(work);
        let mut outcome = None;
        let locked = self.exclusive_dyn(&mut |db| {
            let Some(work) = work.take() else {
                return Err(MetaError::Abandoned);
            };
            let done = work(db);
            let failed = done.is_err();
            outcome = Some(done);
            if failed {
                Err(MetaError::Abandoned)
            } else {
                Ok(())
            }
        });
        match (locked, outcome) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(out))) => Ok(out),
            (Err(e), _) => Err(e.into()),
            (Ok(()), None) => Err(MetaError::Abandoned.into()),
        }
    }

    /// Commits an uploading update as `version`, atomically; `write_manifest` runs inside
    /// the transaction (see [`Metadata::commit_update`]), and its error is returned as it
    /// was.
    ///
    /// # Errors
    /// The work's error, or the database's.
    pub fn commit<E: From<MetaError>>(
        &self,
        guid: &str,
        session: u64,
        version: &VersionRow,
        write_manifest: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut write = Some(write_manifest);
        let mut failure = None;
        let committed = self.commit_update(guid, session, version, &mut || {
            let write = write.take().ok_or(MetaError::Abandoned)?;
            write().map_err(|e| {
                failure = Some(e);
                MetaError::Abandoned
            })
        });
        match (committed, failure) {
            (_, Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(e.into()),
        }
    }
}
