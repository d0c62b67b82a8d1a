//! The admin commands that work on a data dir, also while `serve` runs on it.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use hotate_engine::{BlockSize, Progress};
use serde_json::json;

use crate::auth;
use crate::data::DataDir;
use crate::meta::UpdateState;

fn time_text(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .to_string()
}

/// Opens the data dir of a command that reads it: refused when there is none, rather
/// than creating an empty one at a mistyped path.
fn open_existing(data: &Path) -> anyhow::Result<std::sync::Arc<DataDir>> {
    if !data.join("meta.sqlite").is_file() {
        bail!(
            "no Hotate data dir at {}: pass --data DIR or set HOTATE_DATA (`disk import` creates one)",
            data.display()
        );
    }
    open(data)
}

/// Opens (creating when needed) the data dir.
fn open(data: &Path) -> anyhow::Result<std::sync::Arc<DataDir>> {
    DataDir::open(data).with_context(|| format!("opening data dir {}", data.display()))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `user add NAME`: the password comes from `HOTATE_PASSWORD`, a prompt, or stdin.
pub fn user_add(data: &Path, name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        bail!("the user name is empty");
    }
    let password = match std::env::var("HOTATE_PASSWORD") {
        Ok(password) => password,
        Err(_) if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password("Password: ")?;
            let again = rpassword::prompt_password("Password (again): ")?;
            if first != again {
                bail!("the passwords differ; nothing was changed");
            }
            first
        }
        Err(_) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text.lines().next().unwrap_or_default().to_owned()
        }
    };
    if password.is_empty() {
        bail!("the password is empty: set HOTATE_PASSWORD or type one");
    }
    let dir = open(data)?;
    dir.meta.add_user(name, &auth::hash_password(&password)?)?;
    println!("User {name} saved.");
    Ok(())
}

/// `disk import NAME IMAGE`.
pub async fn disk_import(
    data: &Path,
    name: &str,
    image: &Path,
    block_size: u32,
    comment: &str,
    json: bool,
) -> anyhow::Result<()> {
    let block_size = BlockSize::new(block_size)?;
    let dir = open(data)?;
    let progress = Progress::default();
    let (disk, version) = dir
        .import(name, image, block_size, comment, &progress)
        .await?;
    if json {
        print_json(&json!({
            "disk_id": disk.id,
            "version": version.id,
            "size": disk.size,
            "block_size": disk.block_size,
            "bytes_stored": version.bytes_stored,
        }))
    } else {
        println!(
            "Imported disk {} ({}), {} bytes, first version {} ({} bytes stored).",
            disk.name, disk.id, disk.size, version.id, version.bytes_stored
        );
        Ok(())
    }
}

/// `disk list`.
pub fn disk_list(data: &Path, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let mut rows = Vec::new();
    for disk in dir.meta.disks()? {
        let latest = dir.meta.latest_version(&disk.id)?;
        rows.push((disk, latest));
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(d, v)| {
                json!({"id": d.id, "name": d.name, "size": d.size, "block_size": d.block_size,
                       "latest_version": v.id})
            })
            .collect();
        return print_json(&json!(list));
    }
    if rows.is_empty() {
        println!("No disks. Import one with `hotate-server disk import NAME IMAGE`.");
    }
    for (d, v) in rows {
        println!(
            "{}  {}  size={}  block_size={}  latest={}",
            d.id, d.name, d.size, d.block_size, v.id
        );
    }
    Ok(())
}

/// `disk versions DISK`, oldest first.
pub fn disk_versions(data: &Path, disk: &str, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let disk = dir.meta.disk(disk)?;
    let versions = dir.meta.versions(&disk.id)?;
    if json {
        let list: Vec<_> = versions
            .iter()
            .map(|v| {
                json!({"id": v.id, "parent": v.parent, "comment": v.comment,
                       "created_at": time_text(v.created_at), "terminal": v.terminal,
                       "user": v.user, "root": v.root.to_string(),
                       "blocks_changed": v.blocks_changed, "bytes_stored": v.bytes_stored})
            })
            .collect();
        return print_json(&json!(list));
    }
    for v in versions {
        println!(
            "{}  parent={}  {}  terminal={}  {}",
            v.id,
            v.parent.as_deref().unwrap_or("-"),
            time_text(v.created_at),
            if v.terminal.is_empty() {
                "-"
            } else {
                &v.terminal
            },
            v.comment
        );
    }
    Ok(())
}

/// `disk export DISK [--version V] --output FILE`.
pub fn disk_export(
    data: &Path,
    disk: &str,
    version: Option<&str>,
    output: &Path,
) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let disk = dir.meta.disk(disk)?;
    let version = match version {
        Some(id) => dir.meta.version(&disk.id, id)?,
        None => dir.meta.latest_version(&disk.id)?,
    };
    let bytes = dir
        .export(&version, output)
        .with_context(|| format!("exporting version {} to {}", version.id, output.display()))?;
    println!(
        "Exported version {} of {} ({} bytes, every chunk verified) to {}.",
        version.id,
        disk.name,
        bytes,
        output.display()
    );
    Ok(())
}

/// `update list`.
pub fn update_list(data: &Path, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let updates = dir.meta.updates()?;
    if json {
        let list: Vec<_> = updates
            .iter()
            .map(|u| {
                json!({"data_write_guid": u.guid, "disk_id": u.disk_id, "terminal": u.terminal,
                       "state": u.state.as_str(), "user": u.user, "base_version": u.base_version,
                       "new_version": u.new_version, "bytes_received": u.bytes_received})
            })
            .collect();
        return print_json(&json!(list));
    }
    for u in updates {
        println!(
            "{}  disk={}  terminal={}  state={}  base={}{}",
            u.guid,
            u.disk_id,
            u.terminal,
            u.state.as_str(),
            u.base_version,
            u.new_version
                .map(|v| format!("  new={v}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `update abort DISK`: discards the live update of a disk.
pub fn update_abort(data: &Path, disk: &str) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let disk = dir.meta.disk(disk)?;
    let Some(live) = dir.meta.live_update(&disk.id)? else {
        bail!("disk {} has no update in progress", disk.name);
    };
    dir.meta.set_state(&live.guid, UpdateState::Aborted)?;
    println!(
        "Aborted update {} of {} from terminal {}. The terminal can run `hotate-client update cancel`, then start again.",
        live.guid, disk.name, live.terminal
    );
    Ok(())
}
