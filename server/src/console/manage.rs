//! The console's API for managing: a version's comment and deletion, the terminals, and
//! the users (admins only). Each call checks the caller's role on the server; the pages
//! only hide what a role may not do.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, Caller, Shared};
use crate::app::{App, UserView, admin_only, blocking};
use crate::error::ServerError;
use crate::meta::Role;

/// A JSON body, or the API's error shape when it is not one.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|e| ServerError::BadRequest(e.body_text()).into())
}

#[derive(Debug, Deserialize)]
pub(super) struct VersionChange {
    comment: String,
}

/// `PATCH /api/v1/disks/{disk}/versions/{version}` `{"comment"}` (admins): the version
/// with its new comment.
pub(super) async fn edit_version(
    State(web): State<Shared>,
    caller: Caller,
    Path((disk, version)): Path<(String, String)>,
    change: Result<Json<VersionChange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let change = body(change)?;
    let app = web.app.clone();
    let view = blocking(move || {
        app.set_comment(&caller.session, &disk, &version, &change.comment)?;
        Ok(app.version_of(&disk, &version)?.into())
    })
    .await?;
    Ok(Json::<crate::app::VersionView>(view).into_response())
}

/// `DELETE /api/v1/disks/{disk}/versions/{version}` (admins), with the rules of
/// `version delete`: never the latest, nor the base of a live update.
pub(super) async fn delete_version(
    State(web): State<Shared>,
    caller: Caller,
    Path((disk, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    blocking(move || {
        admin_only(&caller.session, "only an admin may delete a version")?;
        app.delete_version(&caller.session, &disk, &version)
            .map(drop)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/terminals`: each terminal's latest update, by terminal name (an
/// operator's own updates' terminals only).
pub(super) async fn terminals(
    State(web): State<Shared>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    Ok(Json(blocking(move || app.terminals(&caller.session)).await?).into_response())
}

/// `GET /api/v1/users` (admins).
pub(super) async fn users(State(web): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    let app = web.app.clone();
    let list = blocking(move || {
        admin_only(&caller.session, "only an admin may manage users")?;
        app.users()
    })
    .await?;
    Ok(Json(list).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct NewUser {
    name: String,
    password: String,
    /// `admin` or `operator` (the default).
    #[serde(default)]
    role: Option<String>,
}

/// `POST /api/v1/users` `{"name","password","role"}` (admins): the user added, 201.
pub(super) async fn add_user(
    State(web): State<Shared>,
    caller: Caller,
    user: Result<Json<NewUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = body(user)?;
    let app = web.app.clone();
    let view = blocking(move || {
        admin_only(&caller.session, "only an admin may manage users")?;
        crate::text::check_name("user name", &user.name)?;
        let role = match user.role.as_deref() {
            None | Some("") => Role::Operator,
            Some(role) => Role::parse(role)?,
        };
        app.add_user(&caller.session, &user.name, &user.password, Some(role))?;
        user_view(&app, &user.name)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct UserChange {
    #[serde(default)]
    role: Option<String>,
    /// A new password: the user's sessions end.
    #[serde(default)]
    password: Option<String>,
}

/// `PATCH /api/v1/users/{name}` `{"role"}` and/or `{"password"}` (admins; an admin's own
/// role stays): the user as changed.
pub(super) async fn edit_user(
    State(web): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    change: Result<Json<UserChange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let change = body(change)?;
    let app = web.app.clone();
    let view = blocking(move || {
        let role = change.role.as_deref().map(Role::parse).transpose()?;
        let demotes = role.is_some_and(|r| r != Role::Admin);
        App::may_manage_user(&caller.session, &name, demotes)?;
        app.check_user(&name)?;
        if let Some(password) = &change.password {
            app.set_password(&caller.session, &name, password)?;
        }
        if let Some(role) = role {
            app.set_role(&caller.session, &name, role)?;
        }
        user_view(&app, &name)
    })
    .await?;
    Ok(Json(view).into_response())
}

/// `DELETE /api/v1/users/{name}` (admins; not their own account): its sessions end.
pub(super) async fn delete_user(
    State(web): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    blocking(move || {
        App::may_manage_user(&caller.session, &name, true)?;
        app.delete_user(&caller.session, &name)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn user_view(app: &App, name: &str) -> Result<UserView, ServerError> {
    app.users()?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| crate::meta::MetaError::UnknownUser(name.to_owned()).into())
}
