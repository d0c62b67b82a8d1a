//! The admin commands that work on a data dir, also while `serve` runs on it.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hotate_engine::{BlockSize, Progress};
use serde_json::json;

use crate::app::{App, data_dir_owner};
use crate::console::Lang;

use crate::data::{DataDir, Places};
use crate::meta::{DiskRow, Role, UpdateQuery, UpdateRow};
use crate::text;
use crate::upkeep::{self, VerifyReport};

/// The language the admin commands speak: `--lang`, else `LC_ALL`/`LANG` (`ja*`).
static LANG: std::sync::OnceLock<Lang> = std::sync::OnceLock::new();

/// Sets the language of the admin commands' messages (once, at the start).
pub fn set_lang(lang: Lang) {
    let _ = LANG.set(lang);
}

fn lang() -> Lang {
    LANG.get().copied().unwrap_or(Lang::En)
}

/// `en` or `ja`, as the admin commands speak.
fn tr(en: String, ja: String) -> String {
    match lang() {
        Lang::En => en,
        Lang::Ja => ja,
    }
}

/// An error as the admin commands say it: in Japanese, a refusal the server names in its
/// table of words, with the English account for the log after it.
pub fn error_text(error: &anyhow::Error) -> String {
    let english = format!("error: {error:#}");
    if lang() == Lang::En {
        return english;
    }
    let named = error.chain().find_map(|cause| {
        let meta = match cause.downcast_ref::<crate::ServerError>() {
            Some(crate::ServerError::Meta(meta)) => meta,
            Some(other) => return Some(server_words_ja(other)),
            None => cause.downcast_ref::<crate::meta::MetaError>()?,
        };
        Some(meta_words_ja(meta))
    });
    match named {
        Some(words) => format!("エラー: {words}\n({english})"),
        None => format!("エラー: {error:#}"),
    }
}

/// A refusal of the server's own in Japanese: in the console's words where it has them,
/// else the table the terminal reads.
fn server_words_ja(err: &crate::ServerError) -> String {
    match err {
        crate::ServerError::ShortPassword { min, .. } => Lang::Ja
            .words()
            .short_password
            .replace("{min}", &min.to_string()),
        other => other.refusal().words(hotate_proto::Language::Ja),
    }
}

/// A metadata refusal in Japanese: in the console's words where they fit a command line,
/// naming the command that helps where the console would say "reload the page".
fn meta_words_ja(err: &crate::meta::MetaError) -> String {
    use crate::meta::MetaError;
    let w = Lang::Ja.words();
    match err {
        MetaError::VersionIsLatest(version) => w.version_latest.replace("{version}", version),
        MetaError::VersionIsBase { version, terminal } => w
            .version_base
            .replace("{version}", version)
            .replace("{terminal}", terminal),
        MetaError::UserExists(user) => w.user_exists.replace("{user}", user),
        MetaError::UnknownUser(user) => format!(
            "ユーザー {user} は存在しません。`hotate-server user list` でユーザーを確認してください。"
        ),
        MetaError::DiskExists(disk) => {
            format!("ディスク {disk} はすでに存在します。別の名前を指定してください。")
        }
        other => other.refusal().words(hotate_proto::Language::Ja),
    }
}

/// Opens the data dir of a command that reads it: refused when there is none, rather
/// than creating an empty one at a mistyped path.
fn open_existing(data: &Places) -> anyhow::Result<std::sync::Arc<DataDir>> {
    let exists = data
        .meta_exists()
        .with_context(|| format!("opening the metadata at {}", data.meta_place()))?;
    if !exists {
        match &data.meta {
            None => bail!(tr(
                format!(
                    "no Hotate data dir at {}: pass --data DIR or set HOTATE_DATA (`disk import` creates one)",
                    data.data.display()
                ),
                format!(
                    "{} に Hotate のデータディレクトリがありません。--data DIR を指定するか HOTATE_DATA を設定してください (`disk import` で作成されます)。",
                    data.data.display()
                )
            )),
            Some(_) => bail!(tr(
                format!(
                    "no Hotate metadata in the {}: check --meta (HOTATE_META) (`disk import` creates it)",
                    data.meta_place()
                ),
                format!(
                    "{} に Hotate のメタデータがありません。--meta (HOTATE_META) を確認してください (`disk import` で作成されます)。",
                    data.meta_place()
                )
            )),
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
            let first = rpassword::prompt_password(tr("Password: ".into(), "パスワード: ".into()))?;
            let again = rpassword::prompt_password(tr(
                "Password (again): ".into(),
                "パスワード (確認): ".into(),
            ))?;
            if first != again {
                bail!(tr(
                    "the passwords differ; nothing was changed".into(),
                    "パスワードが一致しません。何も変更していません。".into()
                ));
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
        bail!(tr(
            "the password is empty: set HOTATE_PASSWORD or type one".into(),
            "パスワードが空です。HOTATE_PASSWORD を設定するか入力してください。".into()
        ));
    }
    Ok(password)
}

/// `user add NAME [--role admin|operator]`: without a role the first user of a data dir
/// is an admin, later ones operators.
pub fn user_add(data: &Places, name: &str, role: Option<&str>) -> anyhow::Result<()> {
    text::check_name("user name", name)?;
    let role = role.map(Role::parse).transpose()?;
    let password = read_password()?;
    let role = App::offline(open(data)?).add_user(&data_dir_owner(), name, &password, role)?;
    println!(
        "{}",
        tr(
            format!("User {name} added ({}).", role.as_str()),
            format!(
                "ユーザー {name} を追加しました ({})。",
                if role == Role::Admin {
                    "管理者"
                } else {
                    "オペレーター"
                }
            )
        )
    );
    Ok(())
}

/// `user passwd NAME`: sets the password and ends the user's sessions.
pub fn user_passwd(data: &Places, name: &str) -> anyhow::Result<()> {
    let app = App::offline(open_existing(data)?);
    app.check_user(name)?;
    let password = read_password()?;
    app.set_password(&data_dir_owner(), name, &password)?;
    println!(
        "{}",
        tr(
            format!("Password of {name} changed; its sessions are ended."),
            format!("{name} のパスワードを変更しました。ログイン中のセッションは終了しました。")
        )
    );
    Ok(())
}

/// `user delete NAME`.
pub fn user_delete(data: &Places, name: &str) -> anyhow::Result<()> {
    App::offline(open_existing(data)?).delete_user(&data_dir_owner(), name)?;
    println!(
        "{}",
        tr(
            format!("User {name} deleted; its sessions are ended."),
            format!("ユーザー {name} を削除しました。ログイン中のセッションは終了しました。")
        )
    );
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
        let (name, size, stored) = (
            text::printable(&disk.name),
            text::binary_size(disk.size),
            text::binary_size(version.bytes_stored),
        );
        println!(
            "{}",
            tr(
                format!(
                    "Imported disk {name} ({size}), first version {} ({stored} stored; id {}).",
                    version.id, disk.id
                ),
                format!(
                    "ディスク {name} ({size}) をインポートしました。最初のバージョン {} (保存量 {stored}、id {})。",
                    version.id, disk.id
                )
            )
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
        println!(
            "{}",
            tr(
                "No disks. Import one with `hotate-server disk import NAME IMAGE`.".into(),
                "ディスクがありません。`hotate-server disk import NAME IMAGE` でインポートしてください。"
                    .into()
            )
        );
    }
    for d in disks {
        let (name, size, block, stored) = (
            text::printable(&d.name),
            text::binary_size(d.size),
            text::binary_size(u64::from(d.block_size)),
            text::binary_size(d.stored_bytes),
        );
        let (latest, count, id) = (&d.latest_version, d.versions, &d.id);
        let versions = if count == 1 { "version" } else { "versions" };
        println!(
            "{}",
            tr(
                format!(
                    "{name}  {size}  blocks of {block}  latest {latest}  ({count} {versions}, {stored} stored)  id {id}"
                ),
                format!(
                    "{name}  {size}  ブロック {block}  最新 {latest}  (バージョン {count}、保存量 {stored})  id {id}"
                )
            )
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
        bail!(tr(
            format!("unknown --format {format:?}: raw, qcow2, vhdx or vhd"),
            format!("--format {format:?} は使えません。raw、qcow2、vhdx、vhd のいずれかです。")
        ));
    }
    if format == "raw" && how.parent.is_some() {
        bail!(tr(
            "--parent needs --format qcow2, vhdx or vhd (a raw image has no parent)".into(),
            "--parent には --format qcow2、vhdx、vhd が必要です (raw イメージは親を持てません)。"
                .into()
        ));
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
    let (id, name, out) = (&version.id, text::printable(&disk.name), output.display());
    println!(
        "{}",
        tr(
            format!(
                "Exported version {id} of {name} ({bytes} bytes, every chunk verified) to {out}."
            ),
            format!(
                "{name} のバージョン {id} を {out} にエクスポートしました ({bytes} バイト、全チャンク検証済み)。"
            )
        )
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
        let mut line = format!(
            "{}  disk={}  terminal={}  user={}  state={}  started={}  base={}",
            u.data_write_guid,
            text::printable(&u.disk_name),
            text::printable(&u.terminal),
            text::printable(&u.user),
            u.state,
            u.started_at,
            u.base_version,
        );
        if let Some(new) = &u.new_version {
            line += &format!("  new={new}");
        }
        if u.bytes_received > 0 {
            line += &format!("  received={}", text::binary_size(u.bytes_received));
        }
        if let Some(by) = &u.stopped_by {
            line += &format!("  stopped_by={}", text::printable(by));
        }
        println!("{line}");
    }
    Ok(())
}

/// The application over the data dir, the disk named and its live update.
fn live_update_of(data: &Places, disk: &str) -> anyhow::Result<(App, DiskRow, UpdateRow)> {
    let app = App::offline(open_existing(data)?);
    let (disk, live) = app.live_update_of(disk)?;
    let Some(live) = live else {
        bail!(tr(
            format!("disk {} has no update in progress", disk.name),
            format!("ディスク {} に更新中の更新はありません。", disk.name)
        ));
    };
    Ok((app, disk, live))
}

/// `update abort DISK` (「更新中断」): stops and discards the upload of a disk's live
/// update and puts it back to reserved; the terminal finishes again.
pub fn update_abort(data: &Places, disk: &str) -> anyhow::Result<()> {
    let (app, disk, live) = live_update_of(data, disk)?;
    app.abort_update(&data_dir_owner(), &live.guid)?;
    let (guid, name, terminal) = (&live.guid, &disk.name, &live.terminal);
    println!(
        "{}",
        tr(
            format!(
                "Aborted the upload of update {guid} of {name} from terminal {terminal}: the update is kept (reserved). \
                 The terminal runs `hotate-client update finish` again to upload from the start."
            ),
            format!(
                "端末 {terminal} によるディスク {name} の更新 {guid} を更新中断しました。更新は「端末側で更新中」として残ります。\
                 端末側で再度 `hotate-client update finish` を実行すると、最初からアップロードします。"
            )
        )
    );
    Ok(())
}

/// `update cancel DISK` (「更新取消」): ends a disk's live update for good, for a
/// terminal that will not come back.
pub fn update_cancel(data: &Places, disk: &str) -> anyhow::Result<()> {
    let (app, disk, live) = live_update_of(data, disk)?;
    app.cancel_update(&data_dir_owner(), &live.guid)?;
    let (guid, name, terminal) = (&live.guid, &disk.name, &live.terminal);
    println!(
        "{}",
        tr(
            format!(
                "Cancelled update {guid} of {name} from terminal {terminal}. The disk is free; that terminal's \
                 `hotate-client update cancel` restores it."
            ),
            format!(
                "端末 {terminal} によるディスク {name} の更新 {guid} を更新取消しました。ディスクは空いています。\
                 その端末は `hotate-client update cancel` で元に戻せます。"
            )
        )
    );
    Ok(())
}

/// `disk delete DISK [--force]`: the disk, its versions and updates; `--force` aborts a
/// live update first. Chunks go with the next `store gc`.
pub fn disk_delete(data: &Places, disk: &str, force: bool) -> anyhow::Result<()> {
    let (disk, versions) =
        App::offline(open_existing(data)?).delete_disk(&data_dir_owner(), disk, force)?;
    let (name, id) = (&disk.name, &disk.id);
    println!(
        "{}",
        tr(
            format!(
                "Deleted disk {name} ({id}) and its {versions} versions. `hotate-server store gc` frees the space."
            ),
            format!(
                "ディスク {name} ({id}) とその {versions} 個のバージョンを削除しました。領域は `hotate-server store gc` で解放されます。"
            )
        )
    );
    Ok(())
}

/// `version delete DISK VERSION`: refused for the latest version and the base of a live
/// update. Chunks go with the next `store gc`.
pub fn version_delete(data: &Places, disk: &str, version: &str) -> anyhow::Result<()> {
    let disk =
        App::offline(open_existing(data)?).delete_version(&data_dir_owner(), disk, version)?;
    let name = &disk.name;
    println!(
        "{}",
        tr(
            format!(
                "Deleted version {version} of {name}. `hotate-server store gc` frees the space."
            ),
            format!(
                "{name} のバージョン {version} を削除しました。領域は `hotate-server store gc` で解放されます。"
            )
        )
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
            let mb = bytes / 1_000_000;
            eprint!(
                "\r{}",
                tr(
                    format!("Verifying: {done} / {total} chunks, {mb} MB"),
                    format!("検証中: {done} / {total} チャンク、{mb} MB")
                )
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
#[derive(Debug)]
pub struct VerifyFailed;

impl std::fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&tr(
            "the store has damaged, missing or unreadable chunks (damaged ones are quarantined; unreadable ones are left in place: check the disk; upload or import that content again to heal the versions named)".into(),
            "ストアに破損・欠落・読み取り不能なチャンクがあります (破損したものは隔離済み、読み取り不能なものはそのまま残しています。ディスクを確認してください。その内容を再度アップロードかインポートすると、挙げたバージョンが修復されます)。".into(),
        ))
    }
}

impl std::error::Error for VerifyFailed {}

fn print_verify(report: &VerifyReport) {
    let (chunks, bytes) = (report.chunks_checked, report.bytes_checked);
    println!(
        "{}",
        tr(
            format!("Checked {chunks} chunks ({bytes} bytes of content)."),
            format!("{chunks} チャンク ({bytes} バイト) を検証しました。")
        )
    );
    for (what, list) in [
        (tr("Damaged".into(), "破損".into()), &report.damaged),
        (tr("Missing".into(), "欠落".into()), &report.missing),
        (
            tr("Unreadable".into(), "読み取り不能".into()),
            &report.unreadable,
        ),
    ] {
        for broken in list {
            let versions: Vec<String> = broken
                .versions
                .iter()
                .map(|v| format!("{}/{}", v.disk, v.version))
                .collect();
            let (hash, reason) = (&broken.hash, &broken.reason);
            let versions = if versions.is_empty() {
                tr("none".into(), "なし".into())
            } else {
                versions.join(", ")
            };
            println!(
                "{}",
                tr(
                    format!("{what} chunk {hash} ({reason}); breaks versions: {versions}"),
                    format!("{what}チャンク {hash} ({reason})。影響するバージョン: {versions}")
                )
            );
            if !broken.patches.is_empty() {
                let patches = broken.patches.len();
                println!(
                    "{}",
                    tr(
                        format!(
                            "  {patches} intact patches on it, kept: they read again once it is restored"
                        ),
                        format!(
                            "  これを元にする無傷のパッチ {patches} 個は残しています。元のチャンクが復元されると再び読めます。"
                        )
                    )
                );
            }
        }
    }
    for v in &report.unreadable_manifests {
        let (disk, version) = (&v.disk, &v.version);
        println!(
            "{}",
            tr(
                format!("Version {disk}/{version}: its manifest is missing or damaged"),
                format!("バージョン {disk}/{version}: マニフェストが欠落しているか破損しています")
            )
        );
    }
    if report.is_clean() {
        println!("{}", tr("All is well.".into(), "異常はありません。".into()));
    }
}

/// `store gc [--dry-run]`.
pub fn store_gc(data: &Places, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let dir = open_existing(data)?;
    let report = App::offline(dir).gc(dry_run)?;
    if json {
        return print_json(&serde_json::to_value(&report)?);
    }
    let (chunks, freed) = (report.chunks_deleted, text::binary_size(report.bytes_freed));
    if dry_run {
        println!(
            "{}",
            tr(
                format!("Would delete {chunks} unreferenced chunks ({freed})."),
                format!("参照されていないチャンク {chunks} 個 ({freed}) を削除できます。")
            )
        );
    } else {
        let (temps, manifests, pruned) = (
            report.temp_files_deleted,
            report.manifests_deleted,
            report.updates_pruned,
        );
        println!(
            "{}",
            tr(
                format!(
                    "Deleted {chunks} unreferenced chunks, {temps} temp files and {manifests} orphan manifests; freed {freed}. Pruned {pruned} ended updates."
                ),
                format!(
                    "参照されていないチャンク {chunks} 個、一時ファイル {temps} 個、孤立したマニフェスト {manifests} 個を削除し、{freed} を解放しました。終了した更新 {pruned} 件の記録を整理しました。"
                )
            )
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
    let (chunks, bytes) = (stats.chunks, text::binary_size(stats.bytes));
    let (loose, loose_bytes) = (
        stats.unreferenced_chunks,
        text::binary_size(stats.unreferenced_bytes),
    );
    println!(
        "{}",
        tr(
            format!(
                "{chunks} chunks, {bytes}; unreferenced: {loose} chunks, {loose_bytes} (`store gc` deletes them)."
            ),
            format!(
                "{chunks} チャンク、{bytes}。参照されていないもの: {loose} チャンク、{loose_bytes} (`store gc` で削除されます)。"
            )
        )
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
        bail!(tr(
            "migrate needs --to-meta postgres://USER@HOST:PORT/DB, --to-store s3://BUCKET/PREFIX, or both".into(),
            "migrate には --to-meta postgres://USER@HOST:PORT/DB か --to-store s3://BUCKET/PREFIX、またはその両方が必要です。".into()
        ));
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
            eprintln!(
                "{}",
                tr(format!("copied {step}"), format!("コピーしました: {step}"))
            );
        }
    })?;
    if json {
        return print_json(&done);
    }
    let (users, disks, versions) = (done.users, done.disks, done.versions);
    let (meta, store) = (target.meta_place(), target.store_place());
    let (copied, bytes, kept) = (done.chunks_copied, done.bytes_copied, done.chunks_kept);
    println!(
        "{}",
        tr(
            format!(
                "Migrated {users} users, {disks} disks and {versions} versions to {meta} and {store}: {copied} chunks copied ({bytes} bytes), {kept} there already; every chunk read back and verified."
            ),
            format!(
                "ユーザー {users} 人、ディスク {disks} 台、バージョン {versions} 個を {meta} と {store} に移行しました。コピーしたチャンク {copied} 個 ({bytes} バイト)、移行先にあったもの {kept} 個。全チャンクを読み戻して検証しました。"
            )
        )
    );
    Ok(())
}
