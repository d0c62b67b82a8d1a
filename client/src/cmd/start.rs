//! `update start`: reserve the disk for this terminal and switch the write cache to
//! non-restore mode.

use hotate_proto::pb;

use super::Context;
use crate::error::Failed;
use crate::server::explain;
use crate::state::{Terminal, UpdateRecord, WriteCache};

/// # Errors
/// When an update is already in progress, the terminal did not boot the latest version,
/// another terminal holds the disk, or the server cannot be reached.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let lang = ctx.lang;
    if let Some(record) = ctx.state.update()? {
        return Err(Failed(lang.already_started(&record.data_write_guid)).into());
    }
    let terminal = ctx.state.terminal()?;
    let mut session = ctx.login(&terminal).await?;
    println!("{}", lang.connected());
    let url = session.url.clone();
    let disk = session
        .control
        .get_disk(session.request(pb::GetDiskRequest {
            disk: terminal.disk_id.clone(),
        }))
        .await
        .map_err(|s| explain(&s, lang, &url))?
        .into_inner();
    if disk.latest_version != terminal.booted_version {
        return Err(Failed(lang.not_latest(&disk.latest_version, &terminal.booted_version)).into());
    }
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
        println!("{}", lang.adopted(&update.data_write_guid));
    }
    let layers_below = layers_below(&terminal);
    if !layers_below.is_empty() {
        println!("{}", lang.layers_recorded(layers_below.len()));
    }
    // Record first: if switching the write cache fails, `cancel` can still undo it.
    // Servers before the transfer endpoint was part of `Disk` say port 0.
    let transfer_url = (!disk.transfer_url.is_empty() || disk.transfer_port != 0)
        .then(|| super::finish::transfer_endpoint(&url, &disk.transfer_url, disk.transfer_port));
    ctx.state.save_update(&UpdateRecord {
        disk_id: disk.id,
        data_write_guid: update.data_write_guid,
        base_version: update.base_version,
        write_cache_before: terminal.write_cache,
        upload_id: None,
        layers_below,
        transfer_url,
    })?;
    println!("{}", lang.disabling_restore());
    ctx.state.set_write_cache(WriteCache::NonRestore)?;
    println!("{}", lang.started());
    Ok(())
}

/// The identities of the images below the terminal's overlay, for the finish to check;
/// none when the image is raw, or not there yet (it may appear at the next boot).
fn layers_below(terminal: &Terminal) -> Vec<String> {
    terminal
        .open_image()
        .and_then(|image| hotate_engine::source::layers_below(image.as_ref()))
        .map(|layers| layers.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}
