//! The control service: login, disks, and the life of an update up to its upload.

use std::sync::Arc;

use hotate_proto::pb::{self, control_server::Control};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::data::DataDir;
use crate::error::ServerError;
use crate::meta::{Role, Session, UpdateRow, UpdateState};
use crate::text;
use crate::throttle::LoginThrottle;

/// Serves `hotate.v1.Control`.
#[derive(Debug, Clone)]
pub struct ControlService {
    data: Arc<DataDir>,
    transfer_port: u16,
    advertise_transfer: Option<String>,
    throttle: Arc<LoginThrottle>,
}

impl ControlService {
    pub fn new(
        data: Arc<DataDir>,
        transfer_port: u16,
        advertise_transfer: Option<String>,
        throttle: Arc<LoginThrottle>,
    ) -> Self {
        Self {
            data,
            transfer_port,
            advertise_transfer,
            throttle,
        }
    }
}

/// Runs blocking metadata work off the executor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, Status> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .map_err(ServerError::from)??)
}

/// The caller's session, from the request's bearer token.
pub(crate) async fn authenticate<T>(
    data: &Arc<DataDir>,
    request: &Request<T>,
) -> Result<Session, Status> {
    let token = auth::bearer(request);
    let data = data.clone();
    blocking(move || auth::session(&data.meta, token.as_deref())).await
}

/// Refuses a caller that is neither the user and terminal that started the update nor
/// an admin.
pub(crate) fn check_owner(update: &UpdateRow, session: &Session) -> Result<(), ServerError> {
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
        text::check_name("terminal name", &req.terminal)?;
        text::check_name("user name", &req.user)?;
        let user = req.user.clone();
        let data = self.data.clone();
        let checked = self
            .throttle
            .check(&user, addr, move || {
                auth::login(&data.meta, &req.user, &req.password, &req.terminal)
            })
            .await
            .inspect_err(|e| {
                tracing::warn!(user = %text::printable(&user), addr = ?addr, cause = %e, "login refused");
            })?;
        match checked {
            Ok((token, expires_at)) => {
                self.throttle.succeeded(&user, addr);
                Ok(Response::new(pb::LoginReply {
                    token,
                    expires_at: expires_at as u64,
                }))
            }
            Err(ServerError::BadLogin) => {
                let delay = self.throttle.failed(&user, addr);
                tracing::warn!(user = %text::printable(&user), addr = ?addr, "login failed: wrong user name or password");
                tokio::time::sleep(delay).await;
                Err(ServerError::BadLogin.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get_disk(
        &self,
        request: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::Disk>, Status> {
        authenticate(&self.data, &request).await?;
        let data = self.data.clone();
        let disk = request.into_inner().disk;
        let (disk, latest) = blocking(move || {
            let disk = data.meta.disk(&disk)?;
            let latest = data.meta.latest_version(&disk.id)?;
            Ok((disk, latest))
        })
        .await?;
        Ok(Response::new(pb::Disk {
            id: disk.id,
            name: disk.name,
            size: disk.size,
            block_size: disk.block_size,
            latest_version: latest.id,
            latest_root: hotate_proto::hash_bytes(&latest.root),
        }))
    }

    async fn start_update(
        &self,
        request: Request<pb::StartUpdateRequest>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = authenticate(&self.data, &request).await?;
        let req = request.into_inner();
        let data = self.data.clone();
        let (row, adopted) = blocking(move || {
            let disk = data.meta.disk(&req.disk_id)?;
            let guid = uuid::Uuid::new_v4().to_string();
            data.meta
                .start_update(&disk.id, &req.booted_version, &session, &guid)
        })
        .await?;
        tracing::info!(update = %row.guid, disk = %row.disk_id, terminal = %row.terminal, adopted, "update started");
        Ok(Response::new(pb::Update {
            adopted,
            ..update_reply(row)
        }))
    }

    async fn show_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        let session = authenticate(&self.data, &request).await?;
        let guid = request.into_inner().data_write_guid;
        let data = self.data.clone();
        let row = blocking(move || {
            let row = data.meta.update(&guid)?;
            check_owner(&row, &session)?;
            Ok(row)
        })
        .await?;
        Ok(Response::new(update_reply(row)))
    }

    async fn cancel_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        self.transition(request, UpdateState::Cancelled).await
    }

    async fn abort_update(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::Update>, Status> {
        self.transition(request, UpdateState::Aborted).await
    }

    async fn begin_upload(
        &self,
        request: Request<pb::UpdateRef>,
    ) -> Result<Response<pb::BeginUploadReply>, Status> {
        let session = authenticate(&self.data, &request).await?;
        let guid = request.into_inner().data_write_guid;
        let data = self.data.clone();
        let (row, disk, base) = blocking(move || {
            let mut row = data.meta.update(&guid)?;
            check_owner(&row, &session)?;
            if row.state == UpdateState::Reserved {
                row = data.meta.set_state(&guid, UpdateState::Uploading)?;
            } else if row.state != UpdateState::Uploading {
                return Err(ServerError::UpdateNotLive {
                    guid,
                    state: row.state,
                });
            }
            let disk = data.meta.disk(&row.disk_id)?;
            let base = data.meta.version(&disk.id, &row.base_version)?;
            Ok((row, disk, base))
        })
        .await?;
        tracing::info!(update = %row.guid, "upload opened");
        Ok(Response::new(pb::BeginUploadReply {
            upload_id: row.guid,
            transfer_url: self.advertise_transfer.clone().unwrap_or_default(),
            transfer_port: u32::from(self.transfer_port),
            base_version: base.id,
            base_root: hotate_proto::hash_bytes(&base.root),
            disk_size: disk.size,
            block_size: disk.block_size,
        }))
    }
}

impl ControlService {
    async fn transition(
        &self,
        request: Request<pb::UpdateRef>,
        to: UpdateState,
    ) -> Result<Response<pb::Update>, Status> {
        let session = authenticate(&self.data, &request).await?;
        if to == UpdateState::Aborted && session.role != Role::Admin {
            return Err(ServerError::Forbidden(
                "only an admin may abort an update; its owner may cancel it".into(),
            )
            .into());
        }
        let guid = request.into_inner().data_write_guid;
        let data = self.data.clone();
        let row = blocking(move || {
            let row = data.meta.update(&guid)?;
            check_owner(&row, &session)?;
            data.meta.set_state(&guid, to)
        })
        .await?;
        tracing::info!(update = %row.guid, state = row.state.as_str(), "update ended");
        Ok(Response::new(update_reply(row)))
    }
}
