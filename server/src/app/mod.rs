//! The application layer: every operation the server's front ends offer (the gRPC
//! services, the admin commands, the console and its JSON API), with typed results that
//! serialize to the JSON the commands print and the API returns.
//!
//! Operations that touch the database or the store block: async callers run them with
//! [`blocking`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use hotate_engine::Hash;
use serde::Serialize;

use crate::auth;
use crate::data::DataDir;
use crate::error::ServerError;
use crate::live::{Live, UploadProgress};
use crate::meta::{
    DiskRow, MetaError, Role, Session, UpdateQuery, UpdateRow, UpdateState, UserRow, VersionRow,
};
use crate::pace::Pace;
use crate::text;
use crate::throttle::LoginThrottle;
use crate::upkeep;

mod cluster;
mod manage;
mod upload;

pub use cluster::{HEARTBEAT, TransferView};
pub use manage::{admin_only, data_dir_owner};
pub use upload::{Finish, UploadRecord};

/// How long a walk of the store (stored bytes per disk, store size) is reused.
const STORE_SUMMARY_AGE: Duration = Duration::from_secs(60);
/// Updates one account may start: a burst, then one every two seconds (a terminal starts
/// one per update; a retried start gives back its own).
const STARTS_BURST: u32 = 30;
const STARTS_PER_SEC: f64 = 0.5;

/// Runs blocking work off the executor.
///
/// # Errors
/// The work's error, or `Internal` when it panicked.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work).await?
}

/// A time as RFC 3339 text, in UTC.
pub fn time_text(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .to_string()
}

/// A disk as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DiskView {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub latest_version: String,
    /// Bytes of the distinct chunks its versions name (as of the last walk of the store).
    pub stored_bytes: u64,
    pub versions: usize,
    pub created_at: String,
}

/// A version as listed.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub id: String,
    pub parent: Option<String>,
    pub comment: String,
    pub created_at: String,
    pub terminal: String,
    pub user: String,
    pub root: String,
    pub blocks_changed: u64,
    pub bytes_stored: u64,
}

impl From<VersionRow> for VersionView {
    fn from(v: VersionRow) -> Self {
        Self {
            id: v.id,
            parent: v.parent,
            comment: v.comment,
            created_at: time_text(v.created_at),
            terminal: v.terminal,
            user: v.user,
            root: v.root.to_string(),
            blocks_changed: v.blocks_changed,
            bytes_stored: v.bytes_stored,
        }
    }
}

/// An update as listed, with its upload's live progress while a stream is open.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateView {
    pub data_write_guid: String,
    pub disk_id: String,
    pub disk_name: String,
    pub terminal: String,
    pub user: String,
    pub state: &'static str,
    pub base_version: String,
    pub new_version: Option<String>,
    /// Wire bytes stored over all sessions of the upload.
    pub bytes_received: u64,
    /// Whether an upload stream is open now.
    pub uploading_now: bool,
    pub bytes_needed: Option<u64>,
    pub bytes_stored: Option<u64>,
    pub rate: Option<u64>,
    pub eta_secs: Option<u64>,
    /// The terminal's own account of the whole finish, when it sends one (then `rate`
    /// and `eta_secs` are the terminal's too): the share of the finish's time gone, and
    /// the bytes its progress line counts.
    pub percent: Option<u64>,
    pub bytes_total: Option<u64>,
    /// Its place in the order of starting: `?before=` of the next page.
    pub seq: i64,
    pub started_at: String,
    /// When it last changed state: when it ended, once ended.
    pub changed_at: String,
    /// The transfer server its upload was handed to, in a cluster.
    pub transfer_server: Option<String>,
    /// Who last cancelled it or aborted its upload.
    pub stopped_by: Option<String>,
    /// What its new version added to the chunk store, once committed (while the version
    /// exists).
    pub version_bytes_stored: Option<u64>,
}

impl UpdateView {
    fn new(row: UpdateRow, disk_name: String, progress: Option<UploadProgress>) -> Self {
        Self {
            data_write_guid: row.guid,
            disk_id: row.disk_id,
            disk_name,
            terminal: row.terminal,
            user: row.user,
            state: row.state.as_str(),
            base_version: row.base_version,
            new_version: row.new_version,
            bytes_received: row.bytes_received,
            uploading_now: progress.is_some(),
            bytes_needed: progress.map(|p| p.bytes_needed),
            bytes_stored: progress.map(|p| p.bytes_stored),
            rate: progress.map(|p| p.job.map_or(p.rate, |job| job.rate)),
            eta_secs: progress.and_then(|p| p.job.map_or(p.eta_secs, |job| job.eta_secs)),
            percent: progress.and_then(|p| p.job).map(|job| job.percent),
            bytes_total: progress.and_then(|p| p.job).map(|job| job.total),
            seq: row.seq,
            started_at: time_text(row.started_at),
            changed_at: time_text(row.changed_at),
            transfer_server: row.carrier,
            stopped_by: row.stopped_by,
            version_bytes_stored: None,
        }
    }
}

/// A user as listed.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub name: String,
    pub role: &'static str,
    pub created_at: String,
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        Self {
            name: u.name,
            role: u.role.as_str(),
            created_at: time_text(u.created_at),
        }
    }
}

/// A login's token.
#[derive(Debug, Clone, Serialize)]
pub struct LoginView {
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
}

/// The last run of a store upkeep command.
#[derive(Debug, Clone, Serialize)]
pub struct UpkeepView {
    pub at: String,
    /// What it found, in English.
    pub outcome: String,
    /// The same as figures, for the console's words (`null` for a run recorded by an
    /// earlier release).
    pub found: Option<upkeep::UpkeepOutcome>,
}

/// The store at its last walk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreView {
    pub chunks: u64,
    pub bytes: u64,
    /// Seconds since that walk.
    pub age_secs: u64,
    pub disks: usize,
    pub versions: usize,
    pub live_updates: usize,
    pub uploading_now: usize,
    /// The last `store verify` and `store gc`, if they ran.
    pub last_verify: Option<UpkeepView>,
    pub last_gc: Option<UpkeepView>,
    /// The transfer servers registered in the metadata (`serve --role transfer`); none
    /// for a single server.
    pub transfer_servers: Vec<TransferView>,
}

#[derive(Debug, Default)]
struct StoreSummary {
    chunks: u64,
    bytes: u64,
    /// Counted only when a listing of disks asks: it reads every version's manifest.
    per_disk: Option<HashMap<String, u64>>,
}

/// The operations of one data dir.
#[derive(Debug)]
pub struct App {
    data: Arc<DataDir>,
    live: Arc<Live>,
    throttle: Arc<LoginThrottle>,
    /// Updates each account starts: a start+cancel loop cannot flood the history.
    starts: Pace,
    summary: Mutex<Option<(Instant, Arc<StoreSummary>)>>,
}

impl App {
    pub fn new(data: Arc<DataDir>, live: Arc<Live>, throttle: Arc<LoginThrottle>) -> Self {
        Self {
            data,
            live,
            throttle,
            starts: Pace::new(STARTS_PER_SEC, f64::from(STARTS_BURST)),
            summary: Mutex::new(None),
        }
    }

    /// For the admin commands: no uploads run in this process, logins are not throttled.
    pub fn offline(data: Arc<DataDir>) -> Self {
        Self::new(data, Arc::default(), Arc::new(LoginThrottle::new(1)))
    }

    pub fn data(&self) -> &Arc<DataDir> {
        &self.data
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Checks a password (throttled against guessing) and issues a token bound to the
    /// user and `terminal`.
    ///
    /// # Errors
    /// `BadLogin`, `LoginLocked`, `Busy`, or a bad name.
    pub async fn login(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        terminal: &str,
        addr: Option<IpAddr>,
    ) -> Result<LoginView, ServerError> {
        text::check_name("terminal name", terminal)?;
        text::check_name("user name", user)?;
        let app = self.clone();
        let (name, password_owned, terminal) =
            (user.to_owned(), password.to_owned(), terminal.to_owned());
        let checked = self
            .throttle
            .check(user, addr, move || {
                auth::login(app.data.meta(), &name, &password_owned, &terminal)
            })
            .await
            .inspect_err(|e| {
                tracing::warn!(user = %text::printable(user), addr = ?addr, cause = %e, "login refused");
            })?;
        match checked {
            Ok((token, expires_at)) => {
                self.throttle.succeeded(user, addr);
                Ok(LoginView { token, expires_at })
            }
            Err(ServerError::BadLogin) => {
                crate::live::Counters::add(&self.live.counters.login_failures, 1);
                let delay = self.throttle.failed(user, addr);
                tracing::warn!(user = %text::printable(user), addr = ?addr, "login failed: wrong user name or password");
                tokio::time::sleep(delay).await;
                Err(ServerError::BadLogin)
            }
            Err(e) => Err(e),
        }
    }

    /// The session of a bearer token.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, unknown or expired token.
    pub async fn authenticate(
        self: &Arc<Self>,
        token: Option<String>,
    ) -> Result<Session, ServerError> {
        let app = self.clone();
        blocking(move || auth::session(app.data.meta(), token.as_deref())).await
    }

    /// Ends the session of a token (logout).
    ///
    /// # Errors
    /// When the metadata cannot be written.
    pub fn logout(&self, token: &str) -> Result<(), ServerError> {
        let hash = hotate_engine::Hash::of(token.as_bytes());
        self.data.meta().remove_token(&hash)?;
        self.live.logged_out();
        Ok(())
    }

    /// A disk by UUID or name.
    ///
    /// # Errors
    /// `UnknownDisk`.
    pub fn disk(&self, disk: &str) -> Result<DiskRow, ServerError> {
        Ok(self.data.meta().disk(disk)?)
    }

    /// Every disk with its latest version.
    ///
    /// # Errors
    /// When the metadata or the store cannot be read.
    pub fn disks(&self) -> Result<Vec<DiskView>, ServerError> {
        let summary = self.store_summary(true)?;
        let mut list = Vec::new();
        for disk in self.data.meta().disks()? {
            let versions = self.data.meta().versions(&disk.id)?;
            let latest = versions
                .last()
                .map(|v| v.id.clone())
                .ok_or_else(|| ServerError::Internal(format!("disk {} has no version", disk.id)))?;
            list.push(DiskView {
                stored_bytes: summary
                    .per_disk
                    .as_ref()
                    .and_then(|bytes| bytes.get(&disk.id).copied())
                    .unwrap_or(0),
                latest_version: latest,
                versions: versions.len(),
                created_at: time_text(disk.created_at),
                id: disk.id,
                name: disk.name,
                size: disk.size,
                block_size: disk.block_size,
            });
        }
        Ok(list)
    }

    /// A disk's versions, oldest first.
    ///
    /// # Errors
    /// `UnknownDisk`, or when the metadata cannot be read.
    pub fn versions(&self, disk: &str) -> Result<Vec<VersionView>, ServerError> {
        let disk = self.data.meta().disk(disk)?;
        Ok(self
            .data
            .meta()
            .versions(&disk.id)?
            .into_iter()
            .map(VersionView::from)
            .collect())
    }

    /// The updates `query` asks for (live ones first, then ended ones newest first), with
    /// live progress, as `viewer` may see them: an operator sees its own user's updates,
    /// from every terminal; an admin, or the data dir's administrator (`None`), all.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn updates(
        &self,
        viewer: Option<&Session>,
        mut query: UpdateQuery,
    ) -> Result<Vec<UpdateView>, ServerError> {
        if let Some(viewer) = viewer.filter(|v| v.role != Role::Admin) {
            query.user = Some(viewer.user.clone());
        }
        let rows = self.data.meta().updates(&query)?;
        self.views(rows)
    }

    /// Each terminal's latest update, by terminal name, as `viewer` may see them (as
    /// [`App::updates`]).
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn terminals(&self, viewer: &Session) -> Result<Vec<UpdateView>, ServerError> {
        let user = (viewer.role != Role::Admin).then_some(viewer.user.as_str());
        let rows = self.data.meta().terminals(user)?;
        self.views(rows)
    }

    /// Rows as listed: with their disk's name, live progress and what a committed one
    /// stored.
    fn views(&self, rows: Vec<UpdateRow>) -> Result<Vec<UpdateView>, ServerError> {
        let mut names: HashMap<String, String> = HashMap::new();
        // Per disk, its versions' stored bytes, read once where a committed row needs them.
        let mut stored: HashMap<String, HashMap<String, u64>> = HashMap::new();
        let mut list = Vec::with_capacity(rows.len());
        for row in rows {
            let committed = match (&row.state, &row.new_version) {
                (UpdateState::Committed, Some(version)) => Some(version.clone()),
                _ => None,
            };
            if committed.is_some() && !stored.contains_key(&row.disk_id) {
                let versions = match self.data.meta().versions(&row.disk_id) {
                    Ok(versions) => versions,
                    Err(MetaError::UnknownDisk(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                let by_id = versions.into_iter().map(|v| (v.id, v.bytes_stored));
                stored.insert(row.disk_id.clone(), by_id.collect());
            }
            let version_bytes_stored =
                committed.and_then(|version| stored.get(&row.disk_id)?.get(&version).copied());
            if !names.contains_key(&row.disk_id) {
                let name = match self.data.meta().disk(&row.disk_id) {
                    Ok(disk) => disk.name,
                    Err(MetaError::UnknownDisk(_)) => String::new(),
                    Err(e) => return Err(e.into()),
                };
                names.insert(row.disk_id.clone(), name);
            }
            let name = names[&row.disk_id].clone();
            let progress = self.live.progress(&row.guid);
            list.push(UpdateView {
                version_bytes_stored,
                ..UpdateView::new(row, name, progress)
            });
        }
        Ok(list)
    }

    /// One update as listed, for whoever may see it (as [`App::updates`]).
    ///
    /// # Errors
    /// `UnknownUpdate` (also for another user's update, to an operator).
    pub fn update_view(&self, viewer: &Session, guid: &str) -> Result<UpdateView, ServerError> {
        let row = self.data.meta().update(guid)?;
        if viewer.role != Role::Admin && row.user != viewer.user {
            return Err(MetaError::UnknownUpdate(guid.to_owned()).into());
        }
        let guid = row.guid.clone();
        self.views(vec![row])?
            .pop()
            .ok_or(MetaError::UnknownUpdate(guid).into())
    }

    /// One update, for its owner or an admin.
    ///
    /// # Errors
    /// `UnknownUpdate`, `NotYourUpdate`.
    pub fn update(&self, caller: &Session, guid: &str) -> Result<UpdateRow, ServerError> {
        let row = self.data.meta().update(guid)?;
        check_owner(&row, caller)?;
        Ok(row)
    }

    /// Reserves a disk for the caller's terminal (or gives back its own live update), with
    /// a fresh secret that lets that terminal cancel it without a login.
    ///
    /// # Errors
    /// `UnknownDisk`, `NotLatest`, `DiskBusy`.
    pub fn start_update(
        &self,
        caller: &Session,
        disk: &str,
        booted: &str,
    ) -> Result<Started, ServerError> {
        if let Err(wait) = self.starts.try_spend(&caller.user, 1.0) {
            return Err(ServerError::Busy(format!(
                "this account started more than {STARTS_BURST} updates in a short while; \
                 try again in {} s",
                wait.as_secs() + 1
            )));
        }
        let disk = self.data.meta().disk(disk)?;
        let guid = uuid::Uuid::new_v4().to_string();
        let cancel_secret = rand::random::<[u8; 32]>();
        let (update, adopted) = self.data.meta().start_update(
            &disk.id,
            booted,
            caller,
            &guid,
            &Hash::of(&cancel_secret),
        )?;
        tracing::info!(update = %update.guid, disk = %disk.id, terminal = %caller.terminal, adopted, "update started");
        Ok(Started {
            update,
            adopted,
            cancel_secret,
        })
    }

    /// A terminal's cancel of its own update with the secret its start received; no
    /// login. Refused alike for an unknown update and a wrong secret.
    ///
    /// # Errors
    /// `BadSecret`, `UpdateNotLive`.
    pub fn cancel_own_update(&self, guid: &str, secret: &[u8]) -> Result<UpdateRow, ServerError> {
        let row = self
            .data
            .meta()
            .cancel_with_secret(guid, &Hash::of(secret))?;
        tracing::info!(update = %row.guid, terminal = %row.terminal, "update cancelled by its terminal");
        Ok(row)
    }

    /// Ends a live update for good (`Cancelled`): by its owner, or by an admin when its
    /// terminal will not come back (「更新取消」).
    ///
    /// # Errors
    /// `UnknownUpdate`, `NotYourUpdate`, `UpdateNotLive`.
    pub fn cancel_update(&self, caller: &Session, guid: &str) -> Result<UpdateRow, ServerError> {
        self.update(caller, guid)?;
        let row = self
            .data
            .meta()
            .set_state(guid, UpdateState::Cancelled, Some(&caller.user))?;
        tracing::info!(update = %row.guid, by = %caller.user, "update cancelled");
        Ok(row)
    }

    /// An admin's abort (「更新中断」): stops the update's upload (a running stream ends
    /// within a second), discards it and puts the update back to `reserved`, so that the
    /// terminal's next `update finish` uploads again.
    ///
    /// # Errors
    /// `Forbidden` for a non-admin, `UnknownUpdate`, `UpdateNotLive`.
    pub fn abort_update(&self, caller: &Session, guid: &str) -> Result<UpdateRow, ServerError> {
        manage::admin_only(
            caller,
            "only an admin may abort an update; its owner may cancel it",
        )?;
        let row = self.data.meta().abort_upload(guid, &caller.user)?;
        tracing::info!(update = %row.guid, by = %caller.user, "upload aborted; the update is reserved again");
        Ok(row)
    }

    /// Opens (or reopens) the upload of a reserved update.
    ///
    /// # Errors
    /// `UpdateNotLive` when it was cancelled, aborted or committed.
    pub fn begin_upload(
        &self,
        caller: &Session,
        guid: &str,
    ) -> Result<(UpdateRow, DiskRow, VersionRow), ServerError> {
        let mut row = self.update(caller, guid)?;
        if row.state == UpdateState::Reserved {
            row = self
                .data
                .meta()
                .set_state(guid, UpdateState::Uploading, None)?;
        } else if row.state != UpdateState::Uploading {
            return Err(MetaError::UpdateNotLive {
                guid: guid.to_owned(),
                state: row.state,
            }
            .into());
        }
        let disk = self.data.meta().disk(&row.disk_id)?;
        let base = self.data.meta().version(&disk.id, &row.base_version)?;
        Ok((row, disk, base))
    }

    /// The users.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn users(&self) -> Result<Vec<UserView>, ServerError> {
        Ok(self
            .data
            .meta()
            .users()?
            .into_iter()
            .map(UserView::from)
            .collect())
    }

    /// The store's size and what it holds.
    ///
    /// # Errors
    /// When the metadata or the store cannot be read.
    pub fn store(&self) -> Result<StoreView, ServerError> {
        let summary = self.store_summary(false)?;
        let age = self
            .summary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |(at, _)| at.elapsed().as_secs());
        let live = self.data.meta().updates(&UpdateQuery::live())?;
        Ok(StoreView {
            chunks: summary.chunks,
            bytes: summary.bytes,
            age_secs: age,
            disks: self.data.meta().disks()?.len(),
            versions: self.data.meta().versions_since(0)?.len(),
            live_updates: live.len(),
            uploading_now: self.live.uploads(),
            last_verify: self.last_upkeep("verify")?,
            last_gc: self.last_upkeep("gc")?,
            transfer_servers: self.transfer_servers()?,
        })
    }

    fn last_upkeep(&self, kind: &str) -> Result<Option<UpkeepView>, ServerError> {
        Ok(self.data.meta().last_upkeep(kind)?.map(|(at, recorded)| {
            let found = upkeep::UpkeepOutcome::parse(&recorded);
            UpkeepView {
                at: time_text(at),
                outcome: found
                    .as_ref()
                    .map_or(recorded, upkeep::UpkeepOutcome::english),
                found,
            }
        }))
    }

    /// The store's size (and with `per_disk` each disk's share), counted at most once a
    /// minute: a walk of a large store takes a while, and `/metrics` is asked often.
    fn store_summary(&self, per_disk: bool) -> Result<Arc<StoreSummary>, ServerError> {
        let mut cached = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, summary)) = cached.as_ref()
            && at.elapsed() < STORE_SUMMARY_AGE
            && (!per_disk || summary.per_disk.is_some())
        {
            return Ok(summary.clone());
        }
        // One walk of the store; each chunk's size is kept only for the disks' shares.
        let mut summary = StoreSummary::default();
        let mut sizes = HashMap::new();
        self.data.store().list(&mut |hash, len| {
            summary.chunks += 1;
            summary.bytes += len;
            if per_disk {
                sizes.insert(hash, len);
            }
        })?;
        if per_disk {
            summary.per_disk = Some(upkeep::stored_bytes_per_disk(&self.data, &sizes)?);
        }
        let summary = Arc::new(summary);
        *cached = Some((Instant::now(), summary.clone()));
        Ok(summary)
    }
}

/// An update just started, and the secret that lets its terminal cancel it.
#[derive(Debug)]
pub struct Started {
    pub update: UpdateRow,
    /// The caller's own live update, taken back.
    pub adopted: bool,
    pub cancel_secret: [u8; 32],
}

/// Refuses a caller that is neither the user and terminal that started the update nor
/// an admin.
///
/// # Errors
/// `NotYourUpdate`.
pub fn check_owner(update: &UpdateRow, session: &Session) -> Result<(), ServerError> {
    let owner = update.user == session.user && update.terminal == session.terminal;
    if owner || session.role == Role::Admin {
        Ok(())
    } else {
        Err(ServerError::NotYourUpdate {
            guid: update.guid.clone(),
            owner: format!("user {} on terminal {}", update.user, update.terminal),
            caller: format!("user {} on terminal {}", session.user, session.terminal),
        })
    }
}
