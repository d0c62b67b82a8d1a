//! Authentication of gRPC calls, in one place: [`Authenticated`] wraps a service, checks
//! the bearer token of every call but `Login` off the executor, and hands the caller's
//! [`Session`] to the handler as a request extension ([`caller`] takes it out).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::app::App;
use crate::error::ServerError;
use crate::meta::Session;

/// Calls that need no token: a login, and a terminal's cancel of its own update with the
/// secret its start received.
const OPEN_CALLS: &[&str] = &[
    "/hotate.v1.Control/Login",
    "/hotate.v1.Control/CancelOwnUpdate",
];

/// A gRPC service whose calls (but [`OPEN_CALLS`]) carry a valid token.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    app: Arc<App>,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, app: Arc<App>) -> Self {
        Self { inner, app }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = self.app.clone();
        Box::pin(async move {
            if !OPEN_CALLS.contains(&request.uri().path()) {
                let token = bearer(request.headers());
                match app.authenticate(token).await {
                    Ok(session) => {
                        request.extensions_mut().insert(session);
                    }
                    Err(e) => return Ok(Status::from(e).into_http()),
                }
            }
            inner.call(request).await
        })
    }
}

/// The bearer token of `Authorization: Bearer TOKEN`.
pub fn bearer(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// The session [`Authenticated`] found for this call.
///
/// # Errors
/// `Unauthenticated` when the service was not wrapped (a bug, refused all the same).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Session, Status> {
    request
        .extensions()
        .get::<Session>()
        .cloned()
        .ok_or_else(|| ServerError::Unauthenticated.into())
}
