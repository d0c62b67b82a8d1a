//! `update finish`: upload the differential disk, commit the new version, restore the
//! write cache and clear local state. An interrupted finish resumes where it stopped.

use std::sync::Arc;

use hotate_engine::Progress;
use hotate_proto::pb;

use super::{Context, FinishOptions};
use crate::error::{Failed, UsageError};
use crate::inputs;
use crate::progress::{Reporter, mb};
use crate::server::{Session, explain, host_port};
use crate::upload::{self, UploadPlan};

/// # Errors
/// When nothing is in progress, an input is missing, the image is unusable, the upload
/// fails or is interrupted, or the server refuses the commit.
pub async fn run(ctx: &Context, options: &FinishOptions) -> anyhow::Result<()> {
    let lang = ctx.lang;
    let mut record = ctx.current_update()?;
    let terminal = ctx.state.terminal()?;
    // Refuse a missing image, or something that is not one, before asking anything.
    check_image(&terminal.image, lang)?;
    hotate_engine::direct_io::on_mapped_file_shrunk(
        &lang.image_shrunk(&terminal.image.display().to_string()),
    );
    let session = ctx.login(&terminal).await?;
    let url = session.url.clone();
    let guid = record.data_write_guid.clone();

    // While the upload begins, the transfer connection opens and the base manifest
    // downloads, where `update start` recorded the transfer service.
    let prefetch = async {
        match &record.transfer_url {
            Some(transfer) => {
                let (disk, base) = (&record.disk_id, &record.base_version);
                upload::prefetch(&session, transfer, ctx.ca(), disk, base).await
            }
            None => None,
        }
    };
    let mut control = session.control.clone();
    let update_ref = || {
        session.request(pb::UpdateRef {
            data_write_guid: guid.clone(),
        })
    };
    // A comment to be typed is asked for once the update is known to be open; otherwise
    // the upload begins at once, and the update's state is asked for only if it is refused.
    let ask_comment = options.comment.is_none() && inputs::interactive();
    let (begun, comment, prefetched) = if ask_comment {
        let (committed, prefetched) = tokio::join!(committed_or_ended(&session, &guid), prefetch);
        if let Some(version) = committed? {
            return complete(ctx, &record, &version, None);
        }
        let default = lang.default_comment(&terminal.name);
        let typed = inputs::ask(&lang.comment_prompt(&default), "")?;
        let comment = if typed.trim().is_empty() {
            default
        } else {
            typed
        };
        inputs::check_comment(&comment)?;
        let begun = control.begin_upload(update_ref()).await;
        (
            begun.map_err(|s| explain(&s, lang, &url))?,
            comment,
            prefetched,
        )
    } else {
        let comment = options
            .comment
            .clone()
            .unwrap_or_else(|| lang.default_comment(&terminal.name));
        inputs::check_comment(&comment)?;
        let (begun, prefetched) = tokio::join!(control.begin_upload(update_ref()), prefetch);
        match begun {
            Ok(begun) => (begun, comment, prefetched),
            Err(refused) => {
                if let Some(version) = committed_or_ended(&session, &guid).await? {
                    return complete(ctx, &record, &version, None);
                }
                return Err(explain(&refused, lang, &url));
            }
        }
    };
    let begun = begun.into_inner();
    if record.upload_id.as_deref() != Some(&begun.upload_id) {
        record.upload_id = Some(begun.upload_id.clone());
        ctx.state.save_update(&record)?;
    }
    let transfer_url = transfer_endpoint(&url, &begun.transfer_url, begun.transfer_port);
    let base_root = hotate_proto::parse_hash(&begun.base_root)
        .map_err(|e| Failed(format!("the server sent a bad base root: {e}")))?;
    let image = upload::open_image(&terminal, begun.disk_size, lang)?;
    let plan = UploadPlan {
        upload_id: begun.upload_id,
        transfer_url: transfer_url.clone(),
        ca: ctx.ca(),
        disk_id: record.disk_id.clone(),
        base_version: begun.base_version,
        base_root,
        disk_size: begun.disk_size,
        image,
        image_path: terminal.image.clone(),
        comment,
        limit_rate: options.limit_rate,
        layers_at_start: record.layers_below.clone(),
        prefetched,
    };

    let endpoint = host_port(&transfer_url);
    println!("{}", lang.establishing(&endpoint));
    let progress = Arc::new(Progress::default());
    let mut reporter = None;
    let on_open = |already: u64| {
        println!("{}", lang.established(&endpoint));
        if already > 0 {
            println!("{}", lang.resuming(&mb(already)));
        }
        reporter = Some(Reporter::start(progress.clone(), plan.disk_size, lang));
    };
    let uploaded = tokio::select! {
        result = upload::upload(&session, &plan, &progress, on_open) => result?,
        _ = tokio::signal::ctrl_c() => {
            drop(reporter);
            return Err(Failed(lang.interrupted()).into());
        }
    };
    if let Some(reporter) = reporter {
        reporter.finish(plan.disk_size, lang);
    }
    complete(ctx, &record, &uploaded.version, Some(&uploaded))
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
        Ok(pb::UpdateState::Cancelled) => Err(Failed(lang.update_ended("cancelled")).into()),
        _ => Err(Failed(lang.update_ended("aborted")).into()),
    }
}

/// Refuses an image path that does not exist or is not a regular file, saying what it is.
fn check_image(path: &std::path::Path, lang: crate::i18n::Lang) -> anyhow::Result<()> {
    if hotate_engine::direct_io::is_device_path(path) {
        return Ok(()); // A volume or disk: opened as one below.
    }
    let shown = path.display().to_string();
    let kind = match std::fs::metadata(path) {
        Err(_) => return Err(UsageError(lang.image_missing(&shown)).into()),
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) => file_kind(&meta.file_type()),
    };
    Err(UsageError(lang.image_is_not_a_file(&shown, kind)).into())
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "named pipe (FIFO)";
        }
        if kind.is_char_device() {
            return "character device";
        }
        if kind.is_block_device() {
            return "block device";
        }
        if kind.is_socket() {
            return "socket";
        }
    }
    if kind.is_dir() {
        "directory"
    } else {
        "special file"
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
    println!("{}", lang.finished());
    println!("{}", lang.new_version(version));
    if let Some(u) = uploaded {
        let secs = u.elapsed.as_secs_f64().max(0.001);
        println!(
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
