//! The control service: login, disks, and the life of an update up to its upload.
//!
//! Every call but `Login` arrives authenticated ([`crate::gate`]); the work is the
//! application layer's ([`crate::app`]).

use std::sync::Arc;

use hotate_proto::pb::{self, control_server::Control};
use tonic::{Request, Response, Status};

use crate::app::{App, blocking};
use crate::gate::caller;
use crate::meta::{Session, UpdateRow, UpdateState};

/// Serves `hotate.v1.Control`.
#[derive(Debug, Clone)]
pub struct ControlService {
    app: Arc<App>,
    transfers: Transfers,
}

/// Where terminals send their uploads.
#[derive(Debug, Clone)]
pub enum Transfers {
    /// This process's transfer port (`--role all`): at `advertise` when given, else at
    /// the host the terminal reached the control port at.
    Own {
        port: u16,
        advertise: Option<String>,
    },
    /// The transfer servers registered in the metadata (`--role control`).
    Registered,
}

impl ControlService {
    pub fn new(app: Arc<App>, transfers: Transfers) -> Self {
        Self { app, transfers }
    }

    /// The transfer service's URL and port as the replies carry them, for update `guid`'s
    /// upload (handed to a transfer server), or for any when `None`.
    async fn transfer_for(&self, guid: Option<String>) -> Result<(String, u32), Status> {
        match &self.transfers {
            Transfers::Own { port, advertise } => {
                Ok((advertise.clone().unwrap_or_default(), u32::from(*port)))
            }
            Transfers::Registered => {
                let app = self.app.clone();
                let url = blocking(move || app.carrier_for(guid.as_deref())).await?;
                Ok((url, 0))
            }
        }
    }
}

pub(crate) fn update_reply(row: UpdateRow) -> pb::Update {
    let state = match row.state {
        UpdateState::Reserved => pb::UpdateState::Reserved,
        UpdateState::Uploading => pb::UpdateState::Uploading,
        UpdateState::Committed => pb::UpdateState::Committed,
        UpdateState::Cancelled => pb::UpdateState::Cancelled,
        UpdateState::Aborted => pb::UpdateState::Aborted,
    };
    pb::Update {
        data_write_guid: row.guid,
        disk_id: row.disk_id,
        base_version: row.base_version,
        terminal: row.terminal,
        user: row.user,
        state: state.into(),
        new_version: row.new_version.unwrap_or_default(),
        adopted: false,
        cancel_secret: Default::default(),
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginReply>, Status> {
        let addr = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let login = self
            .app
            .login(&req.user, &req.password, &req.terminal, addr)
            .await?;
        let begun = if req.begin_update.is_empty() {
            None
        } else {
            // As `BeginUpload` with the new token; a refusal is left for it to explain.
            self.begin(Some(login.token.clone()), req.begin_update)
                .await
                .inspect_err(|e| tracing::debug!(cause = %e.message(), "no upload begun at login"))
                .ok()
        };
        Ok(Response::new(pb::LoginReply {
            token: login.token,
            expires_at: login.expires_at as u64,
            begun,
        }))
    }

    async fn get_disk(
        &self,
        request: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::Disk>, Status> {
        let app = self.app.clone();
        let disk = request.into_inner().disk;
        let (disk, latest) = blocking(move || {
            let disk = app.disk(&disk)?;
            let latest = app.data().meta().latest_version(&disk.id)?;
            Ok((disk, latest))
        })
        .await?;
        // Without a live transfer server the disk is still told; the upload's begin says why.
        let (transfer_url, transfer_port) = self.transfer_for(None).await.unwrap_or_default();
        Ok(Response::new(pb::Disk {
            id: disk.id,
            name: disk.name,
            size: disk.size,
            block_size: disk.block_size,
            latest_version: latest.id,
            latest_root: hotate_proto::hash_bytes(&latest.root),
            transfer_url,
            transfer_port,
        }))
    }

    async fn start_update(
        &self,
        request: Request<pb::StartUpdateRequest>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = caller(&request)?;
        let req = request.into_inner();
        let app = self.app.clone();
        let started =
            blocking(move || app.start_update(&session, &req.disk_id, &req.booted_version)).await?;
        Ok(Response::new(pb::Update {
            adopted: started.adopted,
            cancel_secret: started.cancel_secret.to_vec().into(),
            ..update_reply(started.update)
        }))
    }

    async fn show_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = caller(&request)?;
        let guid = request.into_inner().data_write_guid;
        let app = self.app.clone();
        let row = blocking(move || app.update(&session, &guid)).await?;
        Ok(Response::new(update_reply(row)))
    }

    async fn cancel_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = caller(&request)?;
        let guid = request.into_inner().data_write_guid;
        let app = self.app.clone();
        let row = blocking(move || app.cancel_update(&session, &guid)).await?;
        Ok(Response::new(update_reply(row)))
    }

    async fn cancel_own_update(
        &self,
        request: Request<pb::CancelOwnRequest>,
    ) -> Result<Response<pb::Update>, Status> {
        let req = request.into_inner();
        let app = self.app.clone();
        let row = blocking(move || app.cancel_own_update(&req.data_write_guid, &req.cancel_secret))
            .await?;
        Ok(Response::new(update_reply(row)))
    }

    async fn abort_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = caller(&request)?;
        let guid = request.into_inner().data_write_guid;
        let app = self.app.clone();
        let row = blocking(move || app.abort_update(&session, &guid)).await?;
        Ok(Response::new(update_reply(row)))
    }

    async fn begin_upload(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::BeginUploadReply>, Status> {
        let session = caller(&request)?;
        let guid = request.into_inner().data_write_guid;
        Ok(Response::new(self.begun(session, guid).await?))
    }
}

impl ControlService {
    /// Begins (or reopens) the upload of update `guid` for the session of `token`.
    async fn begin(
        &self,
        token: Option<String>,
        guid: String,
    ) -> Result<pb::BeginUploadReply, Status> {
        let session = self.app.authenticate(token).await?;
        self.begun(session, guid).await
    }

    async fn begun(&self, session: Session, guid: String) -> Result<pb::BeginUploadReply, Status> {
        let app = self.app.clone();
        let (row, disk, base) = blocking(move || app.begin_upload(&session, &guid)).await?;
        let (transfer_url, transfer_port) = self.transfer_for(Some(row.guid.clone())).await?;
        tracing::info!(update = %row.guid, "upload opened");
        Ok(pb::BeginUploadReply {
            upload_id: row.guid,
            transfer_url,
            transfer_port,
            base_version: base.id,
            base_root: hotate_proto::hash_bytes(&base.root),
            disk_size: disk.size,
            block_size: disk.block_size,
        })
    }
}
