//! The admin commands that work on a data dir, also while `serve` runs on it.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hotate_engine::{BlockSize, Progress};
use serde_json::json;

use crate::app::{App, data_dir_owner};

use crate::data::{DataDir, Places};
use crate::meta::{DiskRow, Role, UpdateQuery, UpdateRow};
use crate::text;
use crate::upkeep::{self, VerifyReport};

/// Opens the data dir of a command that reads it: refused when there is none, rather
/// than creating an empty one at a mistyped path.
fn open_existing(data: &Places) -> anyhow::Result<std::sync::Arc<DataDir>> {
    let exists = data
        .meta_exists()
        .with_context(|| format!("opening the metadata at {}", data.meta_place()))?;
    if !exists {
        match &data.meta {
            None => bail!(
                "no Hotate data dir at {}: pass --data DIR or set HOTATE_DATA (`disk import` creates one)",
                data.data.display()
            ),
            Some(_) => bail!(
                "no Hotate metadata in the {}: check --meta (HOTATE_META) (`disk import` creates it)",
                data.meta_place()
            ),
        }
    }
    open(data)
}

/// Opens (creating when needed) the data dir.
fn open(data: &Places) -> anyhow::Result<std::sync::Arc<DataDir>> {
    DataDir::open_at(data).with_context(|| match &data.meta {
        None => format!("opening data dir {}", data.data.display()),
        Some(_) => format!(
            "opening data dir {} with the metadata in the {}",
            data.data.display(),
            data.meta_place()
        ),
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A new password: `HOTATE_PASSWORD`, else typed twice on a terminal, else stdin's first
/// line.
fn read_password() -> anyhow::Result<String> {
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
    Ok(password)
}

/// `user add NAME [--role admin|operator]`: without a role the first user of a data dir
/// is an admin, later ones operators.
pub fn user_add(data: &Places, name: &str, role: Option<&str>) -> anyhow::Result<()> {
    text::check_name("user name", name)?;
    let role = role.map(Role::parse).transpose()?;
    let password = read_password()?;
    let role = App::offline(open(data)?).add_user(name, &password, role)?;
    println!("User {name} added ({}).", role.as_str());
    Ok(())
}

/// `user passwd NAME`: sets the password and ends the user's sessions.
pub fn user_passwd(data: &Places, name: &str) -> anyhow::Result<()> {
    let app = App::offline(open_existing(data)?);
    app.check_user(name)?;
    let password = read_password()?;
    app.set_password(name, &password)?;
    println!("Password of {name} changed; its sessions are ended.");
    Ok(())
}

/// `user delete NAME`.
pub fn user_delete(data: &Places, name: &str) -> anyhow::Result<()> {
    App::offline(open_existing(data)?).delete_user(name)?;
    println!("User {name} deleted; its sessions are ended.");
    Ok(())
}

/// `user list`.
pub fn user_list(data: &Places, json: bool) -> anyhow::Result<()> {
    let users = App::offline(open_existing(data)?).users()?;
    if json {
        return print_json(&users);
    }
    for u in users {
        println!("{}  {}  {}", text::printable(&u.name), u.role, u.created_at);
    }
    Ok(())
}

/// `disk import NAME IMAGE`.
pub async fn disk_import(
    data: &Places,
    name: &str,
    image: &Path,
    block_size: u32,
    comment: &str,
    json: bool,
) -> anyhow::Result<()> {
    let block_size = BlockSize::new(block_size)?;
    text::check_name("disk name", name)?;
    text::check_comment(comment)?;
    let dir = open(data)?;
    let progress = Progress::default();
    let (disk, version) = dir
        .import(
            name,
            image,
            block_size,
            comment,
            &data_dir_owner().user,
            &progress,
        )
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
            "Imported disk {} ({}), first version {} ({} stored; id {}).",
            text::printable(&disk.name),
            text::binary_size(disk.size),
            version.id,
            text::binary_size(version.bytes_stored),
            disk.id
        );
        Ok(())
    }
}

/// `disk list`.
pub fn disk_list(data: &Places, json: bool) -> anyhow::Result<()> {
    let disks = App::offline(open_existing(data)?).disks()?;
    if json {
        return print_json(&disks);
    }
    if disks.is_empty() {
        println!("No disks. Import one with `hotate-server disk import NAME IMAGE`.");
    }
    for d in disks {
        println!(
            "{}  {}  blocks of {}  latest {}  ({} versions, {} stored)  id {}",
            text::printable(&d.name),
            text::binary_size(d.size),
            text::binary_size(u64::from(d.block_size)),
            d.latest_version,
            d.versions,
            text::binary_size(d.stored_bytes),
            d.id
        );
    }
    Ok(())
}

/// `disk versions DISK`, oldest first.
pub fn disk_versions(data: &Places, disk: &str, json: bool) -> anyhow::Result<()> {
    let versions = App::offline(open_existing(data)?).versions(disk)?;
    if json {
        return print_json(&versions);
    }
    for v in versions {
        println!(
            "{}  parent={}  {}  terminal={}  {}",
            v.id,
            v.parent.as_deref().unwrap_or("-"),
            v.created_at,
            if v.terminal.is_empty() {
                "-".into()
            } else {
                text::printable(&v.terminal)
            },
            text::printable(&v.comment)
        );
    }
    Ok(())
}

/// How `disk export` writes: `format` raw, qcow2, vhdx or vhd, and but for raw optionally
/// only what differs from an earlier version whose export is `parent_image`.
#[derive(Debug, Clone, Default)]
pub struct ExportFormat {
    pub format: String,
    pub parent: Option<String>,
    pub parent_image: Option<std::path::PathBuf>,
}

/// `disk export DISK [--version V] --output FILE [--format raw|qcow2|vhdx|vhd] [--parent V0]`.
pub fn disk_export(
    data: &Places,
    disk: &str,
    version: Option<&str>,
    output: &Path,
    how: &ExportFormat,
) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let disk = dir.meta().disk(disk)?;
    let version = match version {
        Some(id) => dir.meta().version(&disk.id, id)?,
        None => dir.meta().latest_version(&disk.id)?,
    };
    let format = how.format.as_str();
    if !matches!(format, "raw" | "qcow2" | "vhdx" | "vhd") {
        bail!("unknown --format {format:?}: raw, qcow2, vhdx or vhd");
    }
    if format == "raw" && how.parent.is_some() {
        bail!("--parent needs --format qcow2, vhdx or vhd (a raw image has no parent)");
    }
    // The earlier version and its image, by default PARENT.FORMAT beside the output.
    let earlier = how
        .parent
        .as_deref()
        .map(|p| dir.meta().version(&disk.id, p))
        .transpose()?;
    let image = earlier.as_ref().map(|earlier| {
        how.parent_image.clone().unwrap_or_else(|| {
            output
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{}.{format}", earlier.id))
        })
    });
    let parent = earlier.as_ref().zip(image.as_deref());
    let exporter = crate::export::Exporter::new(&dir);
    let bytes = match format {
        "qcow2" => exporter.qcow2(&version, output, parent),
        "vhdx" => exporter.vhdx(&version, output, parent),
        "vhd" => exporter.vhd(&version, output, parent),
        _ => exporter.raw(&version, output),
    }
    .with_context(|| format!("exporting version {} to {}", version.id, output.display()))?;
    println!(
        "Exported version {} of {} ({} bytes, every chunk verified) to {}.",
        version.id,
        text::printable(&disk.name),
        bytes,
        output.display()
    );
    Ok(())
}

/// `update list`.
pub fn update_list(data: &Places, json: bool) -> anyhow::Result<()> {
    // Oldest first, every update the data dir keeps.
    let mut updates = App::offline(open_existing(data)?).updates(None, UpdateQuery::all())?;
    updates.sort_by_key(|u| u.seq);
    if json {
        return print_json(&updates);
    }
    for u in updates {
        println!(
            "{}  disk={}  terminal={}  state={}  base={}{}",
            u.data_write_guid,
            text::printable(&u.disk_name),
            text::printable(&u.terminal),
            u.state,
            u.base_version,
            u.new_version
                .map(|v| format!("  new={v}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The application over the data dir, the disk named and its live update.
fn live_update_of(data: &Places, disk: &str) -> anyhow::Result<(App, DiskRow, UpdateRow)> {
    let app = App::offline(open_existing(data)?);
    let (disk, live) = app.live_update_of(disk)?;
    let Some(live) = live else {
        bail!("disk {} has no update in progress", disk.name);
    };
    Ok((app, disk, live))
}

/// `update abort DISK` (「更新中断」): stops and discards the upload of a disk's live
/// update and puts it back to reserved; the terminal finishes again.
pub fn update_abort(data: &Places, disk: &str) -> anyhow::Result<()> {
    let (app, disk, live) = live_update_of(data, disk)?;
    app.abort_update(&data_dir_owner(), &live.guid)?;
    println!(
        "Aborted the upload of update {} of {} from terminal {}: the update is kept (reserved). \
         The terminal runs `hotate-client update finish` again to upload from the start.",
        live.guid, disk.name, live.terminal
    );
    Ok(())
}

/// `update cancel DISK` (「更新取消」): ends a disk's live update for good, for a
/// terminal that will not come back.
pub fn update_cancel(data: &Places, disk: &str) -> anyhow::Result<()> {
    let (app, disk, live) = live_update_of(data, disk)?;
    app.cancel_update(&data_dir_owner(), &live.guid)?;
    println!(
        "Cancelled update {} of {} from terminal {}. The disk is free; that terminal's \
         `hotate-client update cancel` restores it.",
        live.guid, disk.name, live.terminal
    );
    Ok(())
}

/// `disk delete DISK [--force]`: the disk, its versions and updates; `--force` aborts a
/// live update first. Chunks go with the next `store gc`.
pub fn disk_delete(data: &Places, disk: &str, force: bool) -> anyhow::Result<()> {
    let (disk, versions) =
        App::offline(open_existing(data)?).delete_disk(&data_dir_owner(), disk, force)?;
    println!(
        "Deleted disk {} ({}) and its {versions} versions. `hotate-server store gc` frees the space.",
        disk.name, disk.id
    );
    Ok(())
}

/// `version delete DISK VERSION`: refused for the latest version and the base of a live
/// update. Chunks go with the next `store gc`.
pub fn version_delete(data: &Places, disk: &str, version: &str) -> anyhow::Result<()> {
    let disk = App::offline(open_existing(data)?).delete_version(disk, version)?;
    println!(
        "Deleted version {version} of {}. `hotate-server store gc` frees the space.",
        disk.name
    );
    Ok(())
}

/// `store verify [--all]`: exits 1 (by error) when anything is damaged or missing.
pub fn store_verify(data: &Places, all: bool, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let show = std::io::stderr().is_terminal();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |done: u64, total: u64, bytes: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if show && (last.elapsed() > Duration::from_millis(200) || done == total) {
            *last = std::time::Instant::now();
            eprint!(
                "\rVerifying: {done} / {total} chunks, {} MB",
                bytes / 1_000_000
            );
            if done == total {
                eprintln!();
            }
        }
    };
    let report = App::offline(dir).verify(all, &progress)?;
    if json {
        print_json(&json!({
            "chunks_checked": report.chunks_checked,
            "bytes_checked": report.bytes_checked,
            "damaged": report.damaged,
            "missing": report.missing,
            "unreadable": report.unreadable,
            "unreadable_manifests": report.unreadable_manifests,
        }))?;
    } else {
        print_verify(&report);
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(anyhow::Error::new(VerifyFailed))
    }
}

/// `store verify` found damage; its report is already printed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store has damaged, missing or unreadable chunks (damaged ones are quarantined; unreadable ones are left in place: check the disk; upload or import that content again to heal the versions named)"
)]
pub struct VerifyFailed;

fn print_verify(report: &VerifyReport) {
    println!(
        "Checked {} chunks ({} bytes of content).",
        report.chunks_checked, report.bytes_checked
    );
    for (what, list) in [
        ("Damaged", &report.damaged),
        ("Missing", &report.missing),
        ("Unreadable", &report.unreadable),
    ] {
        for broken in list {
            let versions: Vec<String> = broken
                .versions
                .iter()
                .map(|v| format!("{}/{}", v.disk, v.version))
                .collect();
            println!(
                "{what} chunk {} ({}); breaks versions: {}",
                broken.hash,
                broken.reason,
                if versions.is_empty() {
                    "none".to_owned()
                } else {
                    versions.join(", ")
                }
            );
            if !broken.patches.is_empty() {
                println!(
                    "  {} intact patches on it, kept: they read again once it is restored",
                    broken.patches.len()
                );
            }
        }
    }
    for v in &report.unreadable_manifests {
        println!(
            "Version {}/{}: its manifest is missing or damaged",
            v.disk, v.version
        );
    }
    if report.is_clean() {
        println!("All is well.");
    }
}

/// `store gc [--dry-run]`.
pub fn store_gc(data: &Places, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let report = App::offline(dir).gc(dry_run)?;
    if json {
        return print_json(&serde_json::to_value(&report)?);
    }
    if dry_run {
        println!(
            "Would delete {} unreferenced chunks ({}).",
            report.chunks_deleted,
            text::binary_size(report.bytes_freed)
        );
    } else {
        println!(
            "Deleted {} unreferenced chunks, {} temp files and {} orphan manifests; freed {}. Pruned {} ended updates.",
            report.chunks_deleted,
            report.temp_files_deleted,
            report.manifests_deleted,
            text::binary_size(report.bytes_freed),
            report.updates_pruned
        );
    }
    Ok(())
}

/// `store stats`.
pub fn store_stats(data: &Places, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let stats = upkeep::stats(&dir)?;
    if json {
        return print_json(&serde_json::to_value(&stats)?);
    }
    println!(
        "{} chunks, {}; unreferenced: {} chunks, {} (`store gc` deletes them).",
        stats.chunks,
        text::binary_size(stats.bytes),
        stats.unreferenced_chunks,
        text::binary_size(stats.unreferenced_bytes)
    );
    Ok(())
}

/// `migrate --to-meta URL --to-store URL`: copies the data dir into the places named.
pub fn migrate(
    data: &Places,
    to_meta: Option<String>,
    to_store: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if to_meta.is_none() && to_store.is_none() {
        bail!(
            "migrate needs --to-meta postgres://USER@HOST:PORT/DB, --to-store s3://BUCKET/PREFIX, or both"
        );
    }
    let from = open_existing(data)?;
    let target = Places {
        data: data.data.clone(),
        meta: to_meta.or_else(|| data.meta.clone()),
        store: to_store.or_else(|| data.store.clone()),
    };
    let to = open(&target)?;
    let done = crate::migrate::migrate(&from, &to, &mut |step| {
        if !json {
            eprintln!("copied {step}");
        }
    })?;
    if json {
        return print_json(&done);
    }
    println!(
        "Migrated {} users, {} disks and {} versions to {} and {}: {} chunks copied ({} bytes), {} there already; every chunk read back and verified.",
        done.users,
        done.disks,
        done.versions,
        target.meta_place(),
        target.store_place(),
        done.chunks_copied,
        done.bytes_copied,
        done.chunks_kept
    );
    Ok(())
}
