//! Why the server refused or failed a call, as one typed table both sides use: the server
//! puts a stable code and its arguments in the status details (`hotate-code`,
//! `hotate-arg-NAME`), and the client words it in the user's language from the same
//! table, so no side matches the other's English text.

use tonic::metadata::{MetadataMap, MetadataValue};

/// The language a refusal is worded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Ja,
}

impl Language {
    /// The language a command's `--lang` (`flag`) names, else the locale's (`LC_ALL`,
    /// then `LANG`): Japanese for `ja*`, English for anything else; `None` when neither
    /// says.
    pub fn from_locale(flag: Option<&str>) -> Option<Self> {
        let from_env = || {
            ["LC_ALL", "LANG"]
                .iter()
                .filter_map(|k| std::env::var(k).ok())
                .find(|v| !v.is_empty())
        };
        let named = flag.map(str::to_owned).or_else(from_env)?;
        Some(if named.to_ascii_lowercase().starts_with("ja") {
            Self::Ja
        } else {
            Self::En
        })
    }
}

/// A refusal or failure, with what its wording needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadLogin,
    LoginLocked {
        retry_after_secs: u64,
    },
    SessionExpired,
    /// The terminal did not boot the latest version.
    NotLatest {
        latest: String,
        booted: String,
    },
    /// Another terminal holds the disk.
    DiskBusy {
        terminal: String,
    },
    UnknownDisk {
        disk: String,
    },
    UnknownVersion {
        version: String,
    },
    UnknownUpdate,
    /// The caller has no update of this disk in progress (a probe needs one).
    NoUpdate {
        disk: String,
    },
    /// The update ended (`cancelled`, `aborted`, `committed`) while it was used.
    UpdateEnded {
        state: String,
    },
    /// Another finish took the upload over.
    TakenOver,
    /// An administrator's 「更新中断」 discarded the upload; the update is kept.
    UploadAborted,
    /// The update belongs to another user or terminal.
    NotYourUpdate,
    /// Only an admin may do this.
    AdminsOnly,
    /// The cancel secret does not match the update.
    BadSecret,
    /// The server is at a limit (uploads, logins, memory): try again shortly.
    ServerBusy {
        detail: String,
    },
    /// The upload did not carry everything, or the content differs: finish again.
    UploadIncomplete,
    /// The server's disk failed a write; nothing of it was recorded.
    ServerDiskFailed,
    /// No transfer server is running to carry the upload (a control server of a cluster).
    NoTransferServer,
    /// The request was invalid (`detail` in English, for the record).
    BadRequest {
        detail: String,
    },
    /// Anything else that failed on the server (`detail` in English, for its log).
    ServerFailed {
        detail: String,
    },
}

const CODE: &str = "hotate-code";

impl Refusal {
    /// One of each, for tests that walk the table.
    pub fn samples() -> Vec<Self> {
        let s = |t: &str| t.to_owned();
        vec![
            Self::BadLogin,
            Self::LoginLocked {
                retry_after_secs: 30,
            },
            Self::SessionExpired,
            Self::NotLatest {
                latest: s("c3066470"),
                booted: s("cbf4cdc8"),
            },
            Self::DiskBusy {
                terminal: s("PC-002"),
            },
            Self::UnknownDisk { disk: s("win10") },
            Self::UnknownVersion {
                version: s("c3066470"),
            },
            Self::UnknownUpdate,
            Self::NoUpdate { disk: s("win10") },
            Self::UpdateEnded {
                state: s("cancelled"),
            },
            Self::TakenOver,
            Self::UploadAborted,
            Self::NotYourUpdate,
            Self::AdminsOnly,
            Self::BadSecret,
            Self::ServerBusy { detail: s("x") },
            Self::UploadIncomplete,
            Self::ServerDiskFailed,
            Self::NoTransferServer,
            Self::BadRequest { detail: s("x") },
            Self::ServerFailed { detail: s("x") },
        ]
    }

    /// The stable code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadLogin => "bad-login",
            Self::LoginLocked { .. } => "login-locked",
            Self::SessionExpired => "session-expired",
            Self::NotLatest { .. } => "not-latest",
            Self::DiskBusy { .. } => "disk-busy",
            Self::UnknownDisk { .. } => "unknown-disk",
            Self::UnknownVersion { .. } => "unknown-version",
            Self::UnknownUpdate => "unknown-update",
            Self::NoUpdate { .. } => "no-update",
            Self::UpdateEnded { .. } => "update-ended",
            Self::TakenOver => "taken-over",
            Self::UploadAborted => "upload-aborted",
            Self::NotYourUpdate => "not-your-update",
            Self::AdminsOnly => "admins-only",
            Self::BadSecret => "bad-secret",
            Self::ServerBusy { .. } => "server-busy",
            Self::UploadIncomplete => "upload-incomplete",
            Self::ServerDiskFailed => "server-disk-failed",
            Self::NoTransferServer => "no-transfer-server",
            Self::BadRequest { .. } => "bad-request",
            Self::ServerFailed { .. } => "server-failed",
        }
    }

    /// Its arguments, by name.
    fn args(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::LoginLocked { retry_after_secs } => {
                vec![("retry-after", retry_after_secs.to_string())]
            }
            Self::NotLatest { latest, booted } => {
                vec![("latest", latest.clone()), ("booted", booted.clone())]
            }
            Self::DiskBusy { terminal } => vec![("terminal", terminal.clone())],
            Self::UnknownDisk { disk } => vec![("disk", disk.clone())],
            Self::UnknownVersion { version } => vec![("version", version.clone())],
            Self::UpdateEnded { state } => vec![("state", state.clone())],
            Self::NoUpdate { disk } => vec![("disk", disk.clone())],
            Self::BadRequest { detail }
            | Self::ServerFailed { detail }
            | Self::ServerBusy { detail } => vec![("detail", detail.clone())],
            _ => Vec::new(),
        }
    }

    /// The details clients older than this table read (`hotate-latest`, `hotate-busy`,
    /// ...): their names and values, still sent so that those clients word and retry
    /// as before.
    fn legacy_details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::NotLatest { latest, booted } => vec![
                ("hotate-latest", latest.clone()),
                ("hotate-booted", booted.clone()),
            ],
            Self::UpdateEnded { state } => vec![("hotate-update-state", state.clone())],
            Self::LoginLocked { retry_after_secs } => {
                vec![("hotate-retry-after", retry_after_secs.to_string())]
            }
            Self::ServerBusy { .. } => vec![("hotate-busy", "1".into())],
            Self::TakenOver => vec![("hotate-taken-over", "1".into())],
            Self::DiskBusy { terminal } => vec![("hotate-terminal", terminal.clone())],
            _ => Vec::new(),
        }
    }

    /// Writes the code and its arguments into a status's details (with the details older
    /// clients read). Arguments that cannot travel as metadata (not visible ASCII) are
    /// sent empty.
    pub fn write(&self, metadata: &mut MetadataMap) {
        metadata.insert(CODE, MetadataValue::from_static(self.code()));
        for (key, value) in self.legacy_details() {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        }
        for (name, value) in self.args() {
            let value: String = value
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(200)
                .collect();
            if let (Ok(key), Ok(value)) = (
                format!("hotate-arg-{name}").parse::<tonic::metadata::MetadataKey<_>>(),
                value.parse(),
            ) {
                metadata.insert(key, value);
            }
        }
    }

    /// The refusal a status's details name, if any.
    pub fn read(metadata: &MetadataMap) -> Option<Self> {
        let get = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let arg = |name: &str| get(&format!("hotate-arg-{name}")).unwrap_or_default();
        Some(match get(CODE)?.as_str() {
            "bad-login" => Self::BadLogin,
            "login-locked" => Self::LoginLocked {
                retry_after_secs: arg("retry-after").parse().unwrap_or(0),
            },
            "session-expired" => Self::SessionExpired,
            "not-latest" => Self::NotLatest {
                latest: arg("latest"),
                booted: arg("booted"),
            },
            "disk-busy" => Self::DiskBusy {
                terminal: arg("terminal"),
            },
            "unknown-disk" => Self::UnknownDisk { disk: arg("disk") },
            "unknown-version" => Self::UnknownVersion {
                version: arg("version"),
            },
            "unknown-update" => Self::UnknownUpdate,
            "no-update" => Self::NoUpdate { disk: arg("disk") },
            "update-ended" => Self::UpdateEnded {
                state: arg("state"),
            },
            "taken-over" => Self::TakenOver,
            "upload-aborted" => Self::UploadAborted,
            "not-your-update" => Self::NotYourUpdate,
            "admins-only" => Self::AdminsOnly,
            "bad-secret" => Self::BadSecret,
            "server-busy" => Self::ServerBusy {
                detail: arg("detail"),
            },
            "upload-incomplete" => Self::UploadIncomplete,
            "server-disk-failed" => Self::ServerDiskFailed,
            "no-transfer-server" => Self::NoTransferServer,
            "bad-request" => Self::BadRequest {
                detail: arg("detail"),
            },
            "server-failed" => Self::ServerFailed {
                detail: arg("detail"),
            },
            _ => return None,
        })
    }

    /// The refusal in `lang`, saying what happened and what to do.
    pub fn words(&self, lang: Language) -> String {
        let pick = |en: String, ja: String| match lang {
            Language::En => en,
            Language::Ja => ja,
        };
        match self {
            Self::BadLogin => pick(
                "Login failed: wrong user name or password.".into(),
                "ログインできません: ユーザー名またはパスワードが正しくありません。".into(),
            ),
            Self::LoginLocked { retry_after_secs } => pick(
                format!(
                    "Login refused for now: too many failed logins for this user or from this address. Try again in {retry_after_secs} s."
                ),
                format!(
                    "ログインに連続して失敗したため、一時的にログインできません。{retry_after_secs} 秒後に再度お試しください。"
                ),
            ),
            Self::SessionExpired => pick(
                "Not logged in, or the session expired: run the command again to log in."
                    .into(),
                "ログインしていないか、セッションの有効期限が切れました。コマンドを再度実行してログインしてください。".into(),
            ),
            Self::NotLatest { latest, booted } => pick(
                format!(
                    "Cannot start the update: the terminal did not boot the latest version (latest={latest}, booted={booted})"
                ),
                format!(
                    "最新のバージョンで起動していないため、更新開始できません。(最新={latest}, 起動={booted})"
                ),
            ),
            Self::DiskBusy { terminal } => pick(
                format!(
                    "Cannot start the update: terminal {terminal} is already updating this disk. Finish or cancel that update first."
                ),
                format!(
                    "端末 {terminal} がこのディスクを更新中のため、更新開始できません。その更新を完了またはキャンセルしてください。"
                ),
            ),
            Self::UnknownDisk { disk } => pick(
                format!("The Manage Server has no disk {disk}."),
                format!("ManageServer にディスク {disk} がありません。"),
            ),
            Self::UnknownVersion { version } => pick(
                format!("The disk has no version {version}."),
                format!("ディスクにバージョン {version} がありません。"),
            ),
            Self::NoUpdate { disk } => pick(
                format!(
                    "This terminal has no update of disk {disk} in progress: `hotate-client bench` predicts the finish of one, so run `hotate-client update start` first."
                ),
                format!(
                    "この端末ではディスク {disk} を更新中ではありません。`hotate-client bench` は更新中の更新の完了を予測します。先に `hotate-client update start` を実行してください。"
                ),
            ),
            Self::UnknownUpdate => pick(
                "The server does not know this update: run `hotate-client update cancel`, then start again."
                    .into(),
                "サーバーはこの更新を認識していません。`hotate-client update cancel` の後、再度開始してください。".into(),
            ),
            Self::UpdateEnded { state } => match state.as_str() {
                "cancelled" => pick(
                    "The update was cancelled on the server (Cancel update, 更新取消), so it cannot be finished. Run `hotate-client update cancel` to restore this terminal; to update the disk, run `hotate-client update start` again.".into(),
                    "サーバー側で更新が取り消されました (更新取消)。この更新は完了できません。`hotate-client update cancel` で端末を元に戻してください。ディスクを更新するには、再度 `hotate-client update start` を実行してください。".into(),
                ),
                "committed" => pick(
                    "The update was already committed on the server: run `hotate-client update finish` to complete this terminal.".into(),
                    "この更新はサーバー側ですでにバージョン作成済みです。`hotate-client update finish` で端末側を完了してください。".into(),
                ),
                _ => pick(
                    "The update was aborted on the server by an administrator. Run `hotate-client update cancel` to restore this terminal, then `hotate-client update start` again.".into(),
                    "管理者によりサーバー側で更新が中止されました。`hotate-client update cancel` で端末を元に戻してから、再度 `hotate-client update start` を実行してください。".into(),
                ),
            },
            Self::TakenOver => pick(
                "Another `update finish` of this update took over the upload, so this one stopped. What it sent is kept on the server; let the other finish complete.".into(),
                "この更新の別の `update finish` がアップロードを引き継いだため、こちらは停止しました。送信済みのデータはサーバーに保持されています。もう一方の完了をお待ちください。".into(),
            ),
            Self::UploadAborted => pick(
                "An administrator interrupted the upload (Abort update, 更新中断). The update is kept: run `hotate-client update finish` again to upload from the start.".into(),
                "管理者によりアップロードが中断されました (更新中断)。更新は保持されています。再度 `hotate-client update finish` を実行すると、最初からアップロードします。".into(),
            ),
            Self::NotYourUpdate => pick(
                "This update belongs to another user or terminal.".into(),
                "この更新は別のユーザーまたは端末のものです。".into(),
            ),
            Self::AdminsOnly => pick(
                "Only an admin may do this.".into(),
                "この操作は管理者のみ行えます。".into(),
            ),
            Self::BadSecret => pick(
                "The server did not accept this terminal's cancel secret for the update.".into(),
                "サーバーはこの更新に対する端末のキャンセル用シークレットを受け付けませんでした。".into(),
            ),
            Self::ServerBusy { detail } => pick(
                format!("The Manage Server is busy ({detail})."),
                format!("ManageServer が混雑しています ({detail})。"),
            ),
            Self::UploadIncomplete => pick(
                "The upload did not reach the server whole: run `hotate-client update finish` again (what arrived is kept).".into(),
                "アップロードが完全にはサーバーに届きませんでした。再度 `hotate-client update finish` を実行してください (届いたデータは保持されています)。".into(),
            ),
            Self::ServerDiskFailed => pick(
                "The Manage Server's disk failed a write; nothing of it was recorded and what was recorded before is kept. Try again once an administrator has checked the server's disk.".into(),
                "ManageServer のディスクへの書き込みに失敗しました。この操作は記録されておらず、それまでの記録は保持されています。管理者がサーバーのディスクを確認した後、再度お試しください。".into(),
            ),
            Self::NoTransferServer => pick(
                "No transfer server of the Manage Server is running to take the upload: run `hotate-client update finish` again in a minute; if it persists, an administrator must start one (`hotate-server serve --role transfer`).".into(),
                "ManageServer にアップロードを受け付ける転送サーバーが起動していません。1 分ほど後に再度 `hotate-client update finish` を実行してください。解決しない場合は、管理者が転送サーバー (`hotate-server serve --role transfer`) を起動する必要があります。".into(),
            ),
            Self::BadRequest { detail } => pick(
                format!("The Manage Server refused the request as invalid ({detail})."),
                format!("ManageServer は要求を不正として拒否しました ({detail})。"),
            ),
            Self::ServerFailed { detail } => pick(
                format!("The Manage Server failed ({detail}); its log says more."),
                format!("ManageServer でエラーが発生しました ({detail})。詳細はサーバーのログを参照してください。"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal travels as its code and arguments and reads back the same, and has
    /// an English and a Japanese wording.
    #[test]
    fn every_refusal_travels_and_is_worded_in_both_languages() {
        for refusal in Refusal::samples() {
            let mut metadata = MetadataMap::new();
            refusal.write(&mut metadata);
            assert_eq!(Refusal::read(&metadata).as_ref(), Some(&refusal));
            let (en, ja) = (refusal.words(Language::En), refusal.words(Language::Ja));
            assert!(!en.is_empty() && en != ja, "{refusal:?}: {en}");
            assert!(!ja.is_ascii(), "{refusal:?} has no Japanese wording: {ja}");
        }
    }

    /// Clients older than the table still find the details they read.
    #[test]
    fn older_clients_find_their_details() {
        let mut metadata = MetadataMap::new();
        Refusal::NotLatest {
            latest: "c3066470".into(),
            booted: "cbf4cdc8".into(),
        }
        .write(&mut metadata);
        assert_eq!(metadata.get("hotate-latest").unwrap(), "c3066470");
        assert_eq!(metadata.get("hotate-booted").unwrap(), "cbf4cdc8");
        let mut metadata = MetadataMap::new();
        Refusal::ServerBusy {
            detail: "uploads".into(),
        }
        .write(&mut metadata);
        assert_eq!(metadata.get("hotate-busy").unwrap(), "1");
    }
}
