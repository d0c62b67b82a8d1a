//! `update start`: reserve the disk for this terminal, switch the write cache to
//! non-restore mode, and keep the base version's manifest for the finish.

use std::time::Duration;

use hotate_engine::Hash;
use hotate_proto::pb;

use super::Context;
use crate::error::Failed;
use crate::server::{Session, explain};
use crate::state::{UpdateRecord, WriteCache};
use crate::upload;

/// # Errors
/// When an update is already in progress, the terminal did not boot the latest version,
/// another terminal holds the disk, or the server cannot be reached.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let lang = ctx.lang;
    if let Some(record) = ctx.state.update()? {
        return Err(Failed(lang.already_started(&record.data_write_guid)).into());
    }
    let terminal = ctx.state.terminal()?;
    // The differential disk must be there and readable before anything is reserved or
    // switched: a missing one is found now, not by the finish after the install.
    super::check_image(&terminal.image, lang)?;
    let mut session = ctx.login(&terminal).await?;
    crate::say!("{}", lang.connected());
    let url = session.url.clone();
    let disk = session
        .control
        .get_disk(session.request(pb::GetDiskRequest {
            disk: terminal.disk_id.clone(),
        }))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => Failed(lang.unknown_disk_id(
                &terminal.disk_id,
                &ctx.state.terminal_toml().display().to_string(),
            ))
            .into(),
            _ => explain(&s, lang, &url),
        })?
        .into_inner();
    if disk.latest_version != terminal.booted_version {
        let refusal = hotate_proto::Refusal::NotLatest {
            latest: disk.latest_version,
            booted: terminal.booted_version,
        };
        return Err(Failed(refusal.words(lang.language())).into());
    }
    let image = upload::open_image(&terminal, disk.size, lang)?;
    let request = session.request(pb::StartUpdateRequest {
        disk_id: disk.id.clone(),
        booted_version: terminal.booted_version.clone(),
        terminal: terminal.name.clone(),
    });
    let update = session
        .control
        .start_update(request)
        .await
        .map_err(|s| explain(&s, lang, &url))?
        .into_inner();
    if update.adopted {
        crate::say!("{}", lang.adopted(&update.data_write_guid));
    }
    let layers_below = layers_below(image.as_ref());
    if !layers_below.is_empty() {
        crate::say!("{}", lang.layers_recorded(layers_below.len()));
    }
    // Record first: if switching the write cache fails, `cancel` can still undo it.
    // Servers before the transfer endpoint was part of `Disk` say port 0.
    let transfer_url = (!disk.transfer_url.is_empty() || disk.transfer_port != 0)
        .then(|| super::finish::transfer_endpoint(&url, &disk.transfer_url, disk.transfer_port));
    let base_root = hotate_proto::parse_hash(&disk.latest_root).ok();
    let record = UpdateRecord {
        disk_id: disk.id,
        data_write_guid: update.data_write_guid,
        base_version: update.base_version,
        write_cache_before: terminal.write_cache,
        upload_id: None,
        layers_below,
        transfer_url,
        base_root: base_root.map(|root| root.to_string()),
    };
    ctx.state.save_update(&record)?;
    ctx.state.save_cancel_secret(&update.cancel_secret)?;
    crate::say!("{}", lang.disabling_restore());
    ctx.state.set_write_cache(WriteCache::NonRestore)?;
    if let (Some(root), Some(transfer)) = (base_root, &record.transfer_url) {
        keep_base_manifest(ctx, &session, transfer, &record, (root, disk.size)).await;
    }
    crate::say!("{}", lang.started());
    Ok(())
}

/// How long `update start` spends on keeping the base manifest at most.
const KEEP_MANIFEST_WITHIN: Duration = Duration::from_secs(60);

/// Downloads the base version's manifest and keeps it in the state dir, so that the
/// finish reads the image while it logs in. Best effort: without it the finish
/// downloads the manifest itself.
async fn keep_base_manifest(
    ctx: &Context,
    session: &Session,
    transfer_url: &str,
    record: &UpdateRecord,
    base: (Hash, u64),
) {
    let fetch = async {
        let mut transfer = session.transfer(transfer_url, ctx.ca()).await?;
        let version = (record.disk_id.as_str(), record.base_version.as_str());
        upload::base_manifest(session, &mut transfer, transfer_url, version, base).await
    };
    let kept = match tokio::time::timeout(KEEP_MANIFEST_WITHIN, fetch).await {
        Ok(Ok(manifest)) => ctx.state.save_base_manifest(&manifest),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "it took longer than {KEEP_MANIFEST_WITHIN:?}"
        )),
    };
    if let Err(e) = kept {
        tracing::debug!(cause = %e, "the base manifest is not kept; the finish downloads it");
    }
}

/// The identities of the images below the terminal's overlay, for the finish to check;
/// none when the image is raw.
fn layers_below(image: &dyn hotate_engine::ImageSource) -> Vec<String> {
    hotate_engine::source::layers_below(image)
        .map(|layers| layers.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}
