//! The administrator's changes: users, deleting disks and versions, ending a disk's live
//! update, and the store's upkeep with its outcome recorded. The admin commands (and
//! later the console) call these; none touches the metadata directly.

use super::App;
use crate::auth;
use crate::error::ServerError;
use crate::meta::{DiskRow, MetaError, Role, Session, UpdateRow, UpdateState};
use crate::upkeep::{self, GcReport, OnProgress, UpkeepOutcome, VerifyReport};

impl App {
    /// Adds a user; without a role the first user of a data dir is an admin, later ones
    /// operators. Returns the role given.
    ///
    /// # Errors
    /// `UserExists`, a password shorter than [`auth::MIN_PASSWORD_CHARS`], or one that
    /// cannot be hashed.
    pub fn add_user(
        &self,
        caller: &Session,
        name: &str,
        password: &str,
        role: Option<Role>,
    ) -> Result<Role, ServerError> {
        auth::check_new_password(password)?;
        let hash = auth::hash_password(password)?;
        let role = self.data.meta().add_user(name, &hash, role)?;
        tracing::info!(user = %name, role = role.as_str(), by = %caller.user, "user added");
        Ok(role)
    }

    /// Fails unless the user exists (before a password is asked for).
    ///
    /// # Errors
    /// `UnknownUser`.
    pub fn check_user(&self, name: &str) -> Result<Role, ServerError> {
        Ok(self
            .data
            .meta()
            .role(name)?
            .ok_or_else(|| MetaError::UnknownUser(name.to_owned()))?)
    }

    /// Sets a user's password and ends its sessions.
    ///
    /// # Errors
    /// `UnknownUser`, or a password shorter than [`auth::MIN_PASSWORD_CHARS`].
    pub fn set_password(
        &self,
        caller: &Session,
        name: &str,
        password: &str,
    ) -> Result<(), ServerError> {
        self.check_user(name)?;
        auth::check_new_password(password)?;
        let hash = auth::hash_password(password)?;
        self.data.meta().set_password(name, &hash)?;
        tracing::info!(user = %name, by = %caller.user, "password changed; sessions ended");
        Ok(())
    }

    /// Changes a user's role.
    ///
    /// # Errors
    /// `UnknownUser`.
    pub fn set_role(&self, caller: &Session, name: &str, role: Role) -> Result<(), ServerError> {
        self.data.meta().set_role(name, role)?;
        tracing::info!(user = %name, role = role.as_str(), by = %caller.user, "role changed");
        Ok(())
    }

    /// Fails unless `caller` is an admin who may change the account `name` this way: the
    /// console never lets an admin delete or demote their own account, so that one admin
    /// always remains to manage.
    ///
    /// # Errors
    /// `Forbidden` for an operator, `OwnAccount`.
    pub fn may_manage_user(
        caller: &Session,
        name: &str,
        removes_admin: bool,
    ) -> Result<(), ServerError> {
        admin_only(caller, "only an admin may manage users")?;
        if removes_admin && caller.user == name {
            return Err(ServerError::OwnAccount);
        }
        Ok(())
    }

    /// Replaces a version's comment (admins).
    ///
    /// # Errors
    /// `Forbidden`, `UnknownDisk`, `UnknownVersion`, or a comment that is too long or
    /// holds control characters.
    pub fn set_comment(
        &self,
        caller: &Session,
        disk: &str,
        version: &str,
        comment: &str,
    ) -> Result<(), ServerError> {
        admin_only(caller, "only an admin may edit a version's comment")?;
        crate::text::check_comment(comment)?;
        let disk = self.data.meta().disk(disk)?;
        self.data.meta().set_comment(&disk.id, version, comment)?;
        tracing::info!(disk = %disk.id, version, by = %caller.user, "comment edited");
        Ok(())
    }

    /// Deletes a user and ends its sessions.
    ///
    /// # Errors
    /// `UnknownUser`.
    pub fn delete_user(&self, caller: &Session, name: &str) -> Result<(), ServerError> {
        self.data.meta().delete_user(name)?;
        tracing::info!(user = %name, by = %caller.user, "user deleted");
        Ok(())
    }

    /// A disk and its live update, if it has one.
    ///
    /// # Errors
    /// `UnknownDisk`.
    pub fn live_update_of(&self, disk: &str) -> Result<(DiskRow, Option<UpdateRow>), ServerError> {
        let disk = self.data.meta().disk(disk)?;
        let live = self.data.meta().live_update(&disk.id)?;
        Ok((disk, live))
    }

    /// Deletes a disk, its versions and updates (a live update is aborted first when
    /// `force`); returns the disk and how many versions went. Chunks go with the next
    /// `store gc`.
    ///
    /// # Errors
    /// `UnknownDisk`; `BadRequest` for a live update without `force`.
    pub fn delete_disk(
        &self,
        caller: &Session,
        disk: &str,
        force: bool,
    ) -> Result<(DiskRow, usize), ServerError> {
        let (disk, live) = self.live_update_of(disk)?;
        if let Some(live) = live {
            if !force {
                return Err(ServerError::BadRequest(format!(
                    "disk {} has an update in progress from terminal {}: finish or cancel it, or pass --force to abort it",
                    disk.name, live.terminal
                )));
            }
            self.data
                .meta()
                .set_state(&live.guid, UpdateState::Aborted, Some(&caller.user))?;
        }
        let versions = self.data.meta().delete_disk(&disk.id)?;
        self.data.manifests().remove_disk(&disk.id);
        tracing::info!(disk = %disk.id, versions, by = %caller.user, "disk deleted");
        Ok((disk, versions))
    }

    /// Deletes a version that is neither the latest nor the base of a live update.
    /// Chunks go with the next `store gc`.
    ///
    /// # Errors
    /// `UnknownDisk`, `UnknownVersion`, `VersionIsLatest`, `VersionIsBase`.
    pub fn delete_version(
        &self,
        caller: &Session,
        disk: &str,
        version: &str,
    ) -> Result<DiskRow, ServerError> {
        let disk = self.data.meta().disk(disk)?;
        self.data.meta().delete_version(&disk.id, version)?;
        self.data.manifests().remove_version(&disk.id, version);
        tracing::info!(disk = %disk.id, version, by = %caller.user, "version deleted");
        Ok(disk)
    }

    /// Verifies the chunks the versions name (every chunk with `all`) and records the
    /// outcome for the console.
    ///
    /// # Errors
    /// When the store or the metadata cannot be read.
    #[tracing::instrument(name = "verify", skip(self, progress))]
    pub fn verify(&self, all: bool, progress: OnProgress<'_>) -> Result<VerifyReport, ServerError> {
        let report = upkeep::verify(&self.data, all, progress)?;
        self.record(&UpkeepOutcome::of_verify(&report, all))?;
        Ok(report)
    }

    /// Deletes the chunks nothing names (or with `dry_run` counts them) and records the
    /// outcome for the console.
    ///
    /// # Errors
    /// `StoreBusy` while an upload runs, or when the store cannot be read or written.
    #[tracing::instrument(name = "gc", skip(self))]
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, ServerError> {
        let report = upkeep::gc(&self.data, dry_run)?;
        if !dry_run {
            self.record(&UpkeepOutcome::of_gc(&report))?;
        }
        Ok(report)
    }

    /// Records an upkeep command's outcome for the console.
    fn record(&self, outcome: &UpkeepOutcome) -> Result<(), ServerError> {
        let kind = match outcome {
            UpkeepOutcome::Verify { .. } => "verify",
            UpkeepOutcome::Gc { .. } => "gc",
        };
        let json =
            serde_json::to_string(outcome).map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(self.data.meta().record_upkeep(kind, &json)?)
    }
}

/// Fails with `Forbidden(why)` unless `caller` is an admin.
///
/// # Errors
/// `Forbidden`.
pub fn admin_only(caller: &Session, why: &str) -> Result<(), ServerError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ServerError::Forbidden(why.to_owned()))
    }
}

/// The caller of the admin commands: whoever can read the data dir is its administrator,
/// named by the system account (`USER`, `LOGNAME` or `USERNAME`), else `admin`.
pub fn data_dir_owner() -> Session {
    let user = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .map(|user| {
            crate::text::printable(user.trim())
                .chars()
                .take(crate::text::MAX_NAME)
                .collect::<String>()
        })
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "admin".to_owned());
    Session {
        user,
        terminal: "hotate-server".into(),
        role: Role::Admin,
    }
}
