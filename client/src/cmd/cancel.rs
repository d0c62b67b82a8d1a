//! `update cancel`: release the reservation (when the server is reachable), restore the
//! write cache and clear local state. No login, as in the manual: the terminal proves the
//! update is its own with the secret `update start` received; only when that cannot
//! settle it (an update that already ended, a record from before secrets) does it log in.

use hotate_proto::pb;
use tonic::Code;

use super::Context;
use crate::error::{Failed, Unreachable};

/// # Errors
/// When nothing is in progress, the login is refused, or local state cannot be written.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let lang = ctx.lang;
    let record = ctx.current_update()?;
    let terminal = ctx.state.terminal()?;
    match release(ctx, &terminal, &record.data_write_guid).await {
        Ok(()) => {}
        Err(Release::Committed(version)) => {
            // Nothing to cancel: the version exists. Leave the terminal as finish would.
            super::finish::complete(ctx, &record, &version, None)?;
            return Err(Failed(lang.already_committed(&version)).into());
        }
        Err(Release::Unreachable(cause)) => eprintln!("{}", lang.cancel_unreachable(&cause)),
        Err(Release::Refused(err)) => return Err(err),
    }
    ctx.restore_terminal(record.write_cache_before)?;
    crate::say!("{}", lang.cancelled());
    Ok(())
}

/// Cancels the update with the secret its start received: no user, no password.
async fn release_with_secret(ctx: &Context, guid: &str, secret: Vec<u8>) -> Result<(), Release> {
    let lang = ctx.lang;
    let url = crate::inputs::server_url(&ctx.state, &ctx.inputs, lang)
        .map_err(|e| Release::Unreachable(e.to_string()))?;
    let channel = crate::server::channel(&url, ctx.ca(), ctx.inputs.insecure, lang)
        .await
        .map_err(|e| Release::Unreachable(e.to_string()))?;
    let mut control = pb::control_client::ControlClient::new(channel);
    let cancelled = control
        .cancel_own_update(pb::CancelOwnRequest {
            data_write_guid: guid.to_owned(),
            cancel_secret: secret.into(),
        })
        .await;
    match cancelled {
        Ok(_) => Ok(()),
        Err(s) if crate::server::is_transport_failure(&s) => {
            Err(Release::Unreachable(s.message().to_owned()))
        }
        Err(s) => Err(Release::Refused(crate::server::explain(&s, lang, &url))),
    }
}

enum Release {
    /// The server had already committed the update as this version.
    Committed(String),
    /// The server could not be asked; local state is restored anyway.
    Unreachable(String),
    /// The server said no (wrong password, another terminal's update).
    Refused(anyhow::Error),
}

async fn release(
    ctx: &Context,
    terminal: &crate::state::Terminal,
    guid: &str,
) -> Result<(), Release> {
    if let Some(secret) = ctx.state.cancel_secret() {
        match release_with_secret(ctx, guid, secret).await {
            Ok(()) => return Ok(()),
            Err(unreachable @ Release::Unreachable(_)) => return Err(unreachable),
            // Ended (committed perhaps) or not this secret's: asked as the owner below.
            Err(_) => tracing::debug!("the cancel secret did not settle it; logging in"),
        }
    }
    let mut session = match ctx.login(terminal).await {
        Ok(session) => session,
        Err(err) if err.is::<Unreachable>() => return Err(Release::Unreachable(err.to_string())),
        Err(err) => return Err(Release::Refused(err)),
    };
    let request = session.request(pb::UpdateRef {
        data_write_guid: guid.to_owned(),
    });
    match session.control.cancel_update(request).await {
        Ok(_) => Ok(()),
        // Already ended on the server: committed is not cancelled; otherwise (aborted,
        // cancelled, unknown) there is nothing to release.
        Err(s) if s.code() == Code::FailedPrecondition => {
            let shown = session
                .control
                .show_update(session.request(pb::UpdateRef {
                    data_write_guid: guid.to_owned(),
                }))
                .await;
            match shown.map(tonic::Response::into_inner) {
                Ok(update) if update.state == pb::UpdateState::Committed as i32 => {
                    Err(Release::Committed(update.new_version))
                }
                _ => Ok(()),
            }
        }
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) if s.code() == Code::Unavailable => {
            Err(Release::Unreachable(s.message().to_owned()))
        }
        Err(s) => Err(Release::Refused(crate::server::explain(
            &s,
            ctx.lang,
            &session.url,
        ))),
    }
}
