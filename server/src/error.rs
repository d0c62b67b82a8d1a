//! The server's errors, and the one place where they become gRPC statuses.
//!
//! Messages say what happened and what to do next; the client shows them as they are.

use hotate_engine::{ChunkError, ManifestError, StoreError};
use hotate_proto::Refusal;
use tonic::{Code, Status};

use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("wrong user name or password")]
    BadLogin,
    #[error("not logged in or the session expired: log in again")]
    Unauthenticated,
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// A console form or script sent without the page's CSRF token.
    #[error("the request lacks the console's CSRF token: reload the page")]
    NoCsrfToken,
    /// A state change sent from a page of another site (its `Origin`).
    #[error("a request from {0} may not change this server")]
    CrossSite(String),
    #[error("update {guid} belongs to {owner}, not {caller}")]
    NotYourUpdate {
        guid: String,
        owner: String,
        caller: String,
    },
    /// The caller has no update of the disk in progress (a probe needs one).
    #[error(
        "no update of disk {disk} in progress for this user and terminal: run `update start` first"
    )]
    NoUpdate { disk: String },
    #[error("an import is writing to the store: run `store gc` again when it ends")]
    StoreBusy,
    #[error("too many failed logins: try again in {secs} s")]
    LoginLocked { secs: u64 },
    #[error("the server is busy ({0}): try again shortly")]
    Busy(String),
    /// A control server of a cluster has no live transfer server to hand an upload to.
    #[error(
        "no transfer server is running: start `hotate-server serve --role transfer --advertise-transfer URL`"
    )]
    NoTransferServer,
    #[error("the upload exceeds its memory budget: {0}")]
    OverBudget(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("a password needs at least {min} characters; this one has {got}")]
    ShortPassword { min: usize, got: usize },
    /// An admin asked the console to delete or demote their own account.
    #[error(
        "an admin may not delete or demote their own account: another admin does it, or `hotate-server user` on the server"
    )]
    OwnAccount,
    /// What the metadata refused or failed at (unknown disk, not the latest version, a
    /// busy disk, ...).
    #[error(transparent)]
    Meta(MetaError),
    #[error("rejected chunk: {0}")]
    BadChunk(ChunkError),
    #[error("{0}")]
    BadImage(String),
    #[error("the upload is incomplete: {0}")]
    Incomplete(String),
    #[error("the uploaded content does not match: {0}")]
    RootMismatch(String),
    #[error("storage failure: {0}")]
    Store(StoreError),
    #[error("manifest failure: {0}")]
    Manifest(ManifestError),
    #[error("IO failure: {0}")]
    Io(std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

// Causes are part of the message (clients see only the message), so they are not also
// reported as sources: `{:#}` would print them twice.
macro_rules! from_cause {
    ($($cause:ty => $variant:ident),* $(,)?) => {$(
        impl From<$cause> for ServerError {
            fn from(cause: $cause) -> Self {
                Self::$variant(cause)
            }
        }
    )*};
}

from_cause! {
    ChunkError => BadChunk,
    StoreError => Store,
    ManifestError => Manifest,
    MetaError => Meta,
    std::io::Error => Io,
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl ServerError {
    /// The gRPC code of this error (the console maps it to an HTTP status).
    pub fn code(&self) -> Code {
        match self {
            Self::BadLogin | Self::Unauthenticated => Code::Unauthenticated,
            Self::Meta(meta) => match meta {
                MetaError::UnknownUser(_)
                | MetaError::UnknownDisk(_)
                | MetaError::UnknownVersion(_)
                | MetaError::UnknownUpdate(_) => Code::NotFound,
                MetaError::UserExists(_) | MetaError::DiskExists(_) => Code::AlreadyExists,
                MetaError::NotLatest { .. }
                | MetaError::UpdateNotLive { .. }
                | MetaError::VersionIsLatest(_)
                | MetaError::VersionIsBase { .. }
                | MetaError::UpdateEnded(_) => Code::FailedPrecondition,
                MetaError::DiskBusy { .. } | MetaError::TakenOver | MetaError::UploadAborted => {
                    Code::Aborted
                }
                MetaError::BadRequest(_) => Code::InvalidArgument,
                MetaError::BadSecret => Code::PermissionDenied,
                MetaError::Abandoned
                | MetaError::Damaged(_)
                | MetaError::DiskFailed(_)
                | MetaError::Unproven(_)
                | MetaError::Backend(_) => Code::Internal,
            },
            Self::Incomplete(_) | Self::RootMismatch(_) | Self::NoUpdate { .. } => {
                Code::FailedPrecondition
            }
            Self::StoreBusy => Code::Aborted,
            Self::NoTransferServer => Code::FailedPrecondition,
            Self::NotYourUpdate { .. }
            | Self::Forbidden(_)
            | Self::NoCsrfToken
            | Self::CrossSite(_) => Code::PermissionDenied,
            Self::BadRequest(_)
            | Self::ShortPassword { .. }
            | Self::BadChunk(_)
            | Self::BadImage(_) => Code::InvalidArgument,
            Self::OwnAccount => Code::FailedPrecondition,
            Self::LoginLocked { .. } | Self::Busy(_) | Self::OverBudget(_) => {
                Code::ResourceExhausted
            }
            Self::Store(StoreError::Io { source, .. }) | Self::Io(source)
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                Code::ResourceExhausted
            }
            Self::Store(_) | Self::Manifest(_) | Self::Io(_) | Self::Internal(_) => Code::Internal,
        }
    }
}

impl ServerError {
    /// The refusal as the wire's typed table names it, for the client to word.
    pub fn refusal(&self) -> Refusal {
        let detail = || self.to_string();
        match self {
            Self::BadLogin => Refusal::BadLogin,
            Self::Unauthenticated => Refusal::SessionExpired,
            Self::Forbidden(_) => Refusal::AdminsOnly,
            Self::NotYourUpdate { .. } => Refusal::NotYourUpdate,
            Self::NoUpdate { disk } => Refusal::NoUpdate { disk: disk.clone() },
            Self::LoginLocked { secs } => Refusal::LoginLocked {
                retry_after_secs: *secs,
            },
            Self::StoreBusy | Self::Busy(_) | Self::OverBudget(_) => {
                Refusal::ServerBusy { detail: detail() }
            }
            Self::NoCsrfToken
            | Self::CrossSite(_)
            | Self::BadRequest(_)
            | Self::ShortPassword { .. }
            | Self::OwnAccount
            | Self::BadChunk(_)
            | Self::BadImage(_) => Refusal::BadRequest { detail: detail() },
            Self::Incomplete(_) | Self::RootMismatch(_) => Refusal::UploadIncomplete,
            Self::NoTransferServer => Refusal::NoTransferServer,
            Self::Meta(meta) => meta.refusal(),
            Self::Store(_) | Self::Manifest(_) | Self::Io(_) | Self::Internal(_) => {
                Refusal::ServerFailed { detail: detail() }
            }
        }
    }
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Self {
        let code = err.code();
        if code == Code::Internal {
            tracing::error!(cause = %err, "request failed");
        }
        let message = err.to_string();
        let mut status = Status::new(code, crate::text::bounded(&message, crate::text::MAX_ERROR));
        err.refusal().write(status.metadata_mut());
        status
    }
}

impl MetaError {
    /// The refusal as the wire's typed table names it, for clients and the admin
    /// commands to word.
    pub fn refusal(&self) -> Refusal {
        match self {
            MetaError::UnknownDisk(disk) => Refusal::UnknownDisk { disk: disk.clone() },
            MetaError::UnknownVersion(version) => Refusal::UnknownVersion {
                version: version.clone(),
            },
            MetaError::UnknownUpdate(_) => Refusal::UnknownUpdate,
            MetaError::NotLatest { latest, booted } => Refusal::NotLatest {
                latest: latest.clone(),
                booted: booted.clone(),
            },
            MetaError::DiskBusy { terminal } => Refusal::DiskBusy {
                terminal: terminal.clone(),
            },
            MetaError::UpdateNotLive { state, .. } | MetaError::UpdateEnded(state) => {
                Refusal::UpdateEnded {
                    state: state.as_str().to_owned(),
                }
            }
            MetaError::TakenOver => Refusal::TakenOver,
            MetaError::UploadAborted => Refusal::UploadAborted,
            MetaError::BadSecret => Refusal::BadSecret,
            MetaError::DiskFailed(_) | MetaError::Unproven(_) => Refusal::ServerDiskFailed,
            MetaError::UnknownUser(_)
            | MetaError::UserExists(_)
            | MetaError::DiskExists(_)
            | MetaError::VersionIsLatest(_)
            | MetaError::VersionIsBase { .. }
            | MetaError::BadRequest(_) => Refusal::BadRequest {
                detail: self.to_string(),
            },
            MetaError::Abandoned | MetaError::Damaged(_) | MetaError::Backend(_) => {
                Refusal::ServerFailed {
                    detail: self.to_string(),
                }
            }
        }
    }
}
