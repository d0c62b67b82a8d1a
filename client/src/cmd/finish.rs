//! `update finish`: upload the differential disk, commit the new version, restore the
//! write cache and clear local state. An interrupted finish resumes where it stopped.

use std::sync::Arc;

use hotate_engine::Progress;
use hotate_proto::pb;

use super::{Context, FinishOptions};
use crate::error::Failed;
use crate::inputs;
use crate::progress::{JobFigures, Reporter, mb};
use crate::server::{self, Session, explain, host_port};
use crate::state::UpdateRecord;
use crate::upload;

/// # Errors
/// When nothing is in progress, an input is missing, the image is unusable, the upload
/// fails or is interrupted, or the server refuses the commit.
pub async fn run(ctx: &Context, options: &FinishOptions) -> anyhow::Result<()> {
    let lang = ctx.lang;
    let record = ctx.current_update()?;
    let terminal = ctx.state.terminal()?;
    // Refuse a missing image, or something that is not one, before asking anything.
    super::check_image(&terminal.image, lang)?;
    hotate_engine::direct_io::on_mapped_file_shrunk(
        &lang.image_shrunk(&terminal.image.display().to_string()),
    );
    // A comment to be typed is asked for once the update is known to be open; otherwise
    // the upload begins at once, and the update's state is asked for only if it is refused.
    let ask_comment = options.comment.is_none() && inputs::interactive();
    // With the base manifest `update start` kept, the image is read from the moment the
    // login returns, while the upload stream opens (not while a comment is typed: the
    // reading's messages would cut into the prompt).
    let kept = (!ask_comment)
        .then(|| ctx.state.base_manifest(&record))
        .flatten();
    let finish = Finish {
        ctx,
        options,
        record,
        terminal,
        ask_comment,
        kept,
        started: std::time::Instant::now(),
    };
    let early = match finish.kept.clone() {
        Some(parent) => {
            let image = upload::open_image(&finish.terminal, parent.disk_size(), lang)?;
            Some(finish.image_plan(image, parent))
        }
        None => None,
    };
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let reading = async {
        read_rx
            .await
            .map_err(|_| Failed(lang.upload_not_opened()).into())
    };
    let connecting = finish.connect(early, read_tx);
    let record = &finish.record;

    let progress = Arc::new(Progress::default());
    let figures = Arc::new(JobFigures::default());
    let mut reporter = None;
    let on_open = |plan: &upload::StreamPlan<'_>, already: u64| {
        crate::say!("{}", lang.established(&host_port(&plan.transfer_url)));
        if already > 0 {
            crate::say!("{}", lang.resuming(&mb(already)));
        }
        reporter = Some(Reporter::start(
            progress.clone(),
            plan.disk_size,
            lang,
            figures.clone(),
        ));
    };
    let uploading = upload::upload(
        lang,
        reading,
        connecting,
        options.limit_rate,
        &progress,
        &figures,
        on_open,
    );
    let uploaded = tokio::select! {
        result = uploading => match result {
            Ok(uploaded) => uploaded,
            Err(e) => match e.downcast::<AlreadyCommitted>() {
                Ok(AlreadyCommitted(version)) => return complete(ctx, record, &version, None),
                Err(e) => return Err(e),
            },
        },
        _ = tokio::signal::ctrl_c() => {
            drop(reporter);
            return Err(Failed(lang.interrupted()).into());
        }
    };
    if let Some(reporter) = reporter {
        reporter.finish(lang);
    }
    complete(ctx, record, &uploaded.version, Some(&uploaded))
}

/// One finish's inputs, shared by reading the image and connecting the upload.
struct Finish<'a> {
    ctx: &'a Context,
    options: &'a FinishOptions,
    record: UpdateRecord,
    terminal: crate::state::Terminal,
    ask_comment: bool,
    /// The base manifest `update start` kept, if it is to be used.
    kept: Option<hotate_engine::Manifest>,
    started: std::time::Instant,
}

impl<'a> Finish<'a> {
    fn image_plan(
        &self,
        image: Arc<dyn hotate_engine::ImageSource>,
        parent: hotate_engine::Manifest,
    ) -> upload::ImagePlan {
        upload::ImagePlan {
            image,
            image_path: self.terminal.image.clone(),
            base_version: self.record.base_version.clone(),
            layers_at_start: self.record.layers_below.clone(),
            parent,
        }
    }

    /// Logs in (connecting to the transfer service meanwhile) and begins the upload;
    /// sends what reading the image needs to `read_tx` as soon as it is there: `early`
    /// once logged in, else once the base manifest has come.
    async fn connect(
        &self,
        early: Option<upload::ImagePlan>,
        read_tx: tokio::sync::oneshot::Sender<upload::ImagePlan>,
    ) -> anyhow::Result<(Session, upload::StreamPlan<'a>)> {
        let (ctx, record, terminal) = (self.ctx, &self.record, &self.terminal);
        let lang = ctx.lang;
        let mut read_tx = Some(read_tx);
        // The transfer service `update start` recorded is connected to meanwhile.
        let connect_transfer = async {
            let url = record.transfer_url.as_deref()?;
            let insecure = ctx.inputs.insecure;
            let connected = server::transfer_client(url, ctx.ca(), insecure, lang).await;
            connected
                .inspect_err(|e| tracing::debug!(cause = %e, "no early transfer connection"))
                .ok()
        };
        // Unless a comment is to be typed first, the login begins the upload too.
        let guid = if self.ask_comment {
            ""
        } else {
            &record.data_write_guid
        };
        let login = ctx.login_and_begin(terminal, guid);
        let (session, transfer) = tokio::join!(login, connect_transfer);
        let (session, begun_at_login) = session?;
        let elapsed = self.started.elapsed();
        tracing::debug!(?elapsed, begun = begun_at_login.is_some(), "logged in");
        // Not before: on two cores it shares with the server, reading made the login's
        // password check two to three times slower.
        if let Some(plan) = early
            && let Some(read_tx) = read_tx.take()
        {
            tracing::debug!("reading with the base manifest kept at `update start`");
            let _ = read_tx.send(plan);
        }

        let comment = Comment {
            given: self.options.comment.as_deref(),
            terminal: &terminal.name,
            ask: self.ask_comment,
        };
        let prefetch = prefetch(&session, record, transfer, self.kept.is_some());
        let begun = begin(ctx, &session, record, &comment, (begun_at_login, prefetch)).await?;
        tracing::debug!(elapsed = ?self.started.elapsed(), "upload begun");

        let Begun {
            reply,
            comment,
            prefetched,
        } = begun;
        if record.upload_id.as_deref() != Some(&reply.upload_id) {
            let mut opened = record.clone();
            opened.upload_id = Some(reply.upload_id.clone());
            ctx.state.save_update(&opened)?;
        }
        let url = &session.url;
        let transfer_url = transfer_endpoint(url, &reply.transfer_url, reply.transfer_port);
        let base_root = hotate_proto::parse_hash(&reply.base_root)
            .map_err(|e| Failed(format!("the server sent a bad base root: {e}")))?;
        let base = (base_root, reply.disk_size);
        let prefetched = prefetched.filter(|p| p.url == transfer_url);
        if let Some(parent) = &self.kept
            && ((parent.root(), parent.disk_size()) != base
                || reply.base_version != record.base_version)
        {
            ctx.state.forget_base_manifest()?;
            return Err(Failed(lang.kept_manifest_stale()).into());
        }
        if let Some(read_tx) = read_tx.take() {
            let plan = self
                .late_plan(&session, &reply, prefetched.as_ref(), &transfer_url, base)
                .await?;
            let _ = read_tx.send(plan);
        }
        crate::say!("{}", lang.establishing(&host_port(&transfer_url)));
        let plan = upload::StreamPlan {
            upload_id: reply.upload_id,
            transfer_url,
            disk_size: reply.disk_size,
            ca: ctx.ca(),
            transfer: prefetched.map(|p| p.transfer),
            comment,
        };
        Ok((session, plan))
    }

    /// What reading needs when `update start` kept no usable base manifest: the image,
    /// and the base manifest fetched while the upload began if it is the base, else
    /// downloaded now.
    async fn late_plan(
        &self,
        session: &Session,
        reply: &pb::BeginUploadReply,
        prefetched: Option<&Prefetched>,
        transfer_url: &str,
        base: (hotate_engine::Hash, u64),
    ) -> anyhow::Result<upload::ImagePlan> {
        let image = upload::open_image(&self.terminal, reply.disk_size, self.ctx.lang)?;
        let parent = match prefetched.and_then(|p| p.manifest.clone()) {
            Some(manifest) if (manifest.root(), manifest.disk_size()) == base => {
                tracing::debug!("using the base manifest fetched while the upload began");
                manifest
            }
            _ => {
                let mut transfer = match prefetched {
                    Some(p) => p.transfer.clone(),
                    None => session.transfer(transfer_url, self.ctx.ca()).await?,
                };
                let version = (self.record.disk_id.as_str(), reply.base_version.as_str());
                upload::base_manifest(session, &mut transfer, transfer_url, version, base).await?
            }
        };
        Ok(self.image_plan(image, parent))
    }
}

/// A previous finish committed the update but stopped before cleaning up: only that is
/// left to do.
#[derive(Debug)]
struct AlreadyCommitted(String);

impl std::fmt::Display for AlreadyCommitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "already committed as {}", self.0)
    }
}

impl std::error::Error for AlreadyCommitted {}

/// The version's comment: the one given, else typed when asked for, else the default
/// for the terminal.
struct Comment<'a> {
    given: Option<&'a str>,
    terminal: &'a str,
    ask: bool,
}

/// The upload begun, with its comment and what was fetched meanwhile.
struct Begun {
    reply: pb::BeginUploadReply,
    comment: String,
    prefetched: Option<Prefetched>,
}

/// A transfer connection opened, and the base manifest fetched (unless kept), while
/// the upload began: a round trip or two off the finish's start on a long link.
struct Prefetched {
    url: String,
    transfer: upload::TransferClient,
    manifest: Option<hotate_engine::Manifest>,
}

/// On the transfer connection opened while logging in, fetches the base manifest unless
/// it is kept; `None` on any failure (the upload then connects as usual).
async fn prefetch(
    session: &Session,
    record: &UpdateRecord,
    transfer: Option<upload::TransferClient>,
    manifest_kept: bool,
) -> Option<Prefetched> {
    let url = record.transfer_url.as_deref()?;
    let mut transfer = transfer?;
    let manifest = if manifest_kept {
        None
    } else {
        let (disk, version) = (&record.disk_id, &record.base_version);
        let fetched = upload::fetch_manifest(session, &mut transfer, url, disk, version).await;
        Some(
            fetched
                .inspect_err(|e| tracing::debug!(cause = %e, "no prefetched manifest"))
                .ok()?,
        )
    };
    Some(Prefetched {
        url: url.to_owned(),
        transfer,
        manifest,
    })
}

/// Begins (or reopens) the upload, asking for the comment first if it is to be typed;
/// meanwhile `prefetch` runs. An upload the login began is taken as it is. An update a
/// previous finish committed is [`AlreadyCommitted`].
async fn begin(
    ctx: &Context,
    session: &Session,
    record: &UpdateRecord,
    comment: &Comment<'_>,
    (begun_at_login, prefetch): (
        Option<pb::BeginUploadReply>,
        impl Future<Output = Option<Prefetched>>,
    ),
) -> anyhow::Result<Begun> {
    let lang = ctx.lang;
    let guid = &record.data_write_guid;
    let mut control = session.control.clone();
    let update_ref = || {
        session.request(pb::UpdateRef {
            data_write_guid: guid.clone(),
        })
    };
    if comment.ask {
        let (committed, prefetched) = tokio::join!(committed_or_ended(session, guid), prefetch);
        if let Some(version) = committed? {
            return Err(AlreadyCommitted(version).into());
        }
        let default = lang.default_comment(comment.terminal);
        let typed = inputs::ask(&lang.comment_prompt(&default), "")?;
        let comment = if typed.trim().is_empty() {
            default
        } else {
            typed
        };
        inputs::check_comment(&comment, lang)?;
        let reply = control
            .begin_upload(update_ref())
            .await
            .map_err(|s| explain(&s, lang, &session.url))?;
        return Ok(Begun {
            reply: reply.into_inner(),
            comment,
            prefetched,
        });
    }
    let comment = comment
        .given
        .map_or_else(|| lang.default_comment(comment.terminal), ToOwned::to_owned);
    inputs::check_comment(&comment, lang)?;
    if let Some(reply) = begun_at_login {
        tracing::debug!("the upload began with the login");
        return Ok(Begun {
            reply,
            comment,
            prefetched: prefetch.await,
        });
    }
    let (begun, prefetched) = tokio::join!(control.begin_upload(update_ref()), prefetch);
    match begun {
        Ok(reply) => Ok(Begun {
            reply: reply.into_inner(),
            comment,
            prefetched,
        }),
        Err(refused) => {
            if let Some(version) = committed_or_ended(session, guid).await? {
                return Err(AlreadyCommitted(version).into());
            }
            Err(explain(&refused, lang, &session.url))
        }
    }
}

/// The words for an update that ended in `state`, as the server's refusal says it.
fn ended(state: &str, lang: crate::i18n::Lang) -> String {
    hotate_proto::Refusal::UpdateEnded {
        state: state.to_owned(),
    }
    .words(lang.language())
}

/// Asks the update's state: `Some(version)` when a previous finish committed it but
/// stopped before cleaning up (only that is left); `None` while it is open.
///
/// # Errors
/// When the server cannot be asked, or the update was cancelled or aborted.
async fn committed_or_ended(session: &Session, guid: &str) -> anyhow::Result<Option<String>> {
    let lang = session.lang;
    let update = session
        .control
        .clone()
        .show_update(session.request(pb::UpdateRef {
            data_write_guid: guid.to_owned(),
        }))
        .await
        .map_err(|s| explain(&s, lang, &session.url))?
        .into_inner();
    match pb::UpdateState::try_from(update.state) {
        Ok(pb::UpdateState::Committed) => Ok(Some(update.new_version)),
        Ok(pb::UpdateState::Reserved | pb::UpdateState::Uploading) => Ok(None),
        Ok(pb::UpdateState::Cancelled) => Err(Failed(ended("cancelled", lang)).into()),
        _ => Err(Failed(ended("aborted", lang)).into()),
    }
}

/// The transfer endpoint the server names: the URL it advertises, else the control URL's
/// host with the transfer port.
pub(crate) fn transfer_endpoint(control_url: &str, advertised: &str, port: u32) -> String {
    if advertised.is_empty() {
        transfer_url_for(control_url, port)
    } else {
        advertised.to_owned()
    }
}

/// The transfer endpoint: the control URL's host with the transfer port.
fn transfer_url_for(control_url: &str, port: u32) -> String {
    let (scheme, rest) = control_url
        .split_once("://")
        .unwrap_or(("http", control_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        // Keep IPv6 brackets; strip only a trailing port.
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    format!("{scheme}://{host}:{port}")
}

pub(crate) fn complete(
    ctx: &Context,
    record: &crate::state::UpdateRecord,
    version: &str,
    uploaded: Option<&upload::Uploaded>,
) -> anyhow::Result<()> {
    let lang = ctx.lang;
    ctx.restore_terminal(record.write_cache_before)?;
    crate::say!("{}", lang.finished());
    crate::say!("{}", lang.new_version(version));
    if let Some(u) = uploaded {
        let secs = u.elapsed.as_secs_f64().max(0.001);
        crate::say!(
            "{}",
            lang.summary(
                &format!("{:.1}", u.image_size as f64 / 1e6),
                &format!("{:.1}", u.bytes_changed as f64 / 1e6),
                &format!("{:.1}", u.bytes_sent as f64 / 1e6),
                &format!("{secs:.1}"),
                &format!("{:.1}", u.image_size as f64 / 1e6 / secs),
            )
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::transfer_url_for;

    #[test]
    fn transfer_endpoint_keeps_the_host_and_scheme() {
        assert_eq!(
            transfer_url_for("https://192.168.10.11:30806", 30811),
            "https://192.168.10.11:30811"
        );
        assert_eq!(
            transfer_url_for("http://127.0.0.1:4000/", 5000),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            transfer_url_for("https://srv.example", 30811),
            "https://srv.example:30811"
        );
        assert_eq!(transfer_url_for("http://[::1]:30806", 1), "http://[::1]:1");
    }
}
