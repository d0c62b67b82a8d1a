//! The console's words in English and Japanese (the seed's: 更新中, 更新中断, バージョン,
//! コメント …), and how a request picks its language.

use serde::Serialize;

/// A console language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Ja => "ja",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code.trim() {
            "en" => Some(Self::En),
            "ja" => Some(Self::Ja),
            _ => None,
        }
    }

    /// The admin commands' language: `flag` (`--lang`), else `LC_ALL` or `LANG`
    /// (`ja*` is Japanese), else English.
    pub fn detect(flag: Option<&str>) -> Self {
        match hotate_proto::Language::from_locale(flag) {
            Some(hotate_proto::Language::Ja) => Self::Ja,
            _ => Self::En,
        }
    }

    /// The first of `ja` or `en` in an `Accept-Language` header, by weight; English when
    /// neither is there.
    pub fn from_accept(header: &str) -> Self {
        let mut best = (Self::En, -1.0_f32);
        for part in header.split(',') {
            let mut pieces = part.split(';');
            let tag = pieces
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let weight = pieces
                .find_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
                .and_then(|q| q.parse().ok())
                .unwrap_or(1.0);
            let lang = if tag == "ja" || tag.starts_with("ja-") {
                Self::Ja
            } else if tag == "en" || tag.starts_with("en-") {
                Self::En
            } else {
                continue;
            };
            if weight > best.1 {
                best = (lang, weight);
            }
        }
        best.0
    }

    /// The language of the refusals shared with the terminal.
    pub fn language(self) -> hotate_proto::Language {
        match self {
            Self::En => hotate_proto::Language::En,
            Self::Ja => hotate_proto::Language::Ja,
        }
    }

    pub fn words(self) -> &'static Words {
        match self {
            Self::En => &EN,
            Self::Ja => &JA,
        }
    }
}

/// Every text the console shows. The page scripts get the same set as JSON.
#[derive(Debug, Serialize)]
pub struct Words {
    pub console: &'static str,
    pub updates: &'static str,
    pub disks: &'static str,
    pub store: &'static str,
    pub login: &'static str,
    pub logout: &'static str,
    pub user: &'static str,
    pub password: &'static str,
    pub disk: &'static str,
    pub terminal: &'static str,
    pub state: &'static str,
    pub progress: &'static str,
    pub rate: &'static str,
    pub eta: &'static str,
    pub base_version: &'static str,
    pub new_version: &'static str,
    pub abort: &'static str,
    pub abort_confirm: &'static str,
    pub abort_note: &'static str,
    pub abort_done: &'static str,
    pub cancel: &'static str,
    pub cancel_confirm: &'static str,
    pub cancel_note: &'static str,
    pub cancel_done: &'static str,
    pub back: &'static str,
    pub no_updates: &'static str,
    pub older: &'static str,
    pub newest: &'static str,
    pub no_disks: &'static str,
    pub reserved: &'static str,
    pub uploading: &'static str,
    pub waiting: &'static str,
    pub committed: &'static str,
    pub cancelled: &'static str,
    pub aborted: &'static str,
    pub name: &'static str,
    pub size: &'static str,
    pub block_size: &'static str,
    pub latest_version: &'static str,
    pub version_count: &'static str,
    pub stored_bytes: &'static str,
    pub versions: &'static str,
    pub version: &'static str,
    pub parent: &'static str,
    pub comment: &'static str,
    pub created_at: &'static str,
    pub blocks_changed: &'static str,
    pub chunks: &'static str,
    pub store_bytes: &'static str,
    pub live_updates: &'static str,
    pub uploading_now: &'static str,
    pub counted_ago: &'static str,
    pub last_verify: &'static str,
    pub last_gc: &'static str,
    pub never_run: &'static str,
    pub transfer_servers: &'static str,
    pub transfer_server: &'static str,
    pub alive: &'static str,
    pub gone: &'static str,
    pub last_seen: &'static str,
    pub carried: &'static str,
    pub admins_only: &'static str,
    pub live_link_lost: &'static str,
    pub seconds: &'static str,
    pub minutes: &'static str,
    pub hours: &'static str,
    pub of: &'static str,
    pub not_found: &'static str,
    pub session_expired: &'static str,
    pub unknown_update: &'static str,
    /// `{state}`: the update's state in these words.
    pub update_ended: &'static str,
    pub stale_page: &'static str,
    /// `{origin}`: the site the request came from.
    pub cross_site: &'static str,
    pub terminals: &'static str,
    pub users: &'static str,
    pub download: &'static str,
    pub edit_comment: &'static str,
    pub save: &'static str,
    pub delete: &'static str,
    pub latest_mark: &'static str,
    /// `{version}`, `{disk}`.
    pub delete_version_confirm: &'static str,
    pub version_deleted: &'static str,
    pub comment_saved: &'static str,
    /// `{version}`.
    pub version_latest: &'static str,
    /// `{version}`, `{terminal}`.
    pub version_base: &'static str,
    pub last_update: &'static str,
    pub started: &'static str,
    pub ended: &'static str,
    pub no_terminals: &'static str,
    pub role: &'static str,
    pub admin_role: &'static str,
    pub operator_role: &'static str,
    pub add_user: &'static str,
    pub change_role: &'static str,
    pub reset_password: &'static str,
    pub new_password: &'static str,
    /// `{user}`.
    pub delete_user_confirm: &'static str,
    pub user_added: &'static str,
    pub user_changed: &'static str,
    pub user_deleted: &'static str,
    pub you: &'static str,
    /// `{min}`.
    pub short_password: &'static str,
    pub own_account: &'static str,
    /// `{user}`.
    pub user_exists: &'static str,
    pub unknown_user: &'static str,
    pub filter: &'static str,
    pub any: &'static str,
    pub live: &'static str,
    pub ended_updates: &'static str,
    pub stopped_by: &'static str,
    pub sent: &'static str,
    pub confirm: &'static str,
    /// `{chunks}`.
    pub verify_clean: &'static str,
    /// `{damaged}`, `{missing}`, `{unreadable}`, `{manifests}`.
    pub verify_found: &'static str,
    pub verify_all: &'static str,
    /// `{chunks}`, `{bytes}`.
    pub gc_done: &'static str,
    /// `{user}`: who aborted the upload of an update that went on.
    pub upload_aborted_by: &'static str,
}

impl Words {
    /// An update's state (`reserved`, `uploading`, ... as the API names it) in these
    /// words; an upload without an open stream is waiting.
    pub fn state(&self, state: &str, uploading_now: bool) -> &'static str {
        match state {
            "reserved" => self.reserved,
            "uploading" if uploading_now => self.uploading,
            "uploading" => self.waiting,
            "committed" => self.committed,
            "cancelled" => self.cancelled,
            _ => self.aborted,
        }
    }
}

pub static EN: Words = Words {
    console: "Hotate Console",
    updates: "Updates",
    disks: "Disks",
    store: "Store",
    login: "Log in",
    logout: "Log out",
    user: "User name",
    password: "Password",
    disk: "Disk",
    terminal: "Terminal",
    state: "State",
    progress: "Progress",
    rate: "Rate",
    eta: "Time left",
    base_version: "Base version",
    new_version: "New version",
    abort: "Abort update",
    abort_confirm: "Abort the update of {disk} from terminal {terminal}?",
    abort_note: "The upload in progress stops and what it sent is discarded; the update goes back to \"Updating on the terminal\". The terminal runs `update finish` again to upload from the start.",
    abort_done: "The upload was aborted: the terminal can run `update finish` again.",
    cancel: "Cancel update",
    cancel_confirm: "Cancel the update of {disk} from terminal {terminal} for good?",
    cancel_note: "The update ends and cannot be finished: only for a terminal that will not come back. The terminal's `update cancel` still restores it.",
    cancel_done: "The update was cancelled.",
    back: "Back",
    no_updates: "No updates.",
    older: "Older updates",
    newest: "Newest updates",
    no_disks: "No disks. Import one with `hotate-server disk import NAME IMAGE`.",
    reserved: "Updating on the terminal",
    uploading: "Uploading",
    waiting: "Uploading (no stream open)",
    committed: "Committed",
    cancelled: "Cancelled",
    aborted: "Aborted",
    name: "Name",
    size: "Size",
    block_size: "Block size",
    latest_version: "Latest version",
    version_count: "Versions",
    stored_bytes: "Stored",
    versions: "Versions",
    version: "Version",
    parent: "Parent",
    comment: "Comment",
    created_at: "Created",
    blocks_changed: "Changed blocks",
    chunks: "Chunks",
    store_bytes: "Store size",
    live_updates: "Updates in progress",
    uploading_now: "Uploads running now",
    counted_ago: "Counted {secs} s ago.",
    last_verify: "Last verify",
    last_gc: "Last gc",
    never_run: "never run (`hotate-server store verify`, `store gc`)",
    transfer_servers: "Transfer servers",
    transfer_server: "Transfer server",
    alive: "alive",
    gone: "not heard from",
    last_seen: "Last heard from",
    carried: "Updates handed to it",
    admins_only: "Only an admin may do this.",
    live_link_lost: "Live updates paused: reconnecting…",
    seconds: "s",
    minutes: "min",
    hours: "h",
    of: "of",
    not_found: "Not found.",
    session_expired: "Not logged in, or the session expired: log in again.",
    unknown_update: "There is no such update: it may have ended. Reload the page.",
    update_ended: "This update has already ended ({state}): there is nothing to abort or cancel.",
    stale_page: "The page is out of date: reload it and try again.",
    cross_site: "A page of {origin} may not change this server.",
    terminals: "Terminals",
    users: "Users",
    download: "Download",
    edit_comment: "Edit comment",
    save: "Save",
    delete: "Delete",
    latest_mark: "latest",
    delete_version_confirm: "Delete version {version} of disk {disk}? This cannot be undone; the next `store gc` frees its space.",
    version_deleted: "The version was deleted.",
    comment_saved: "The comment was saved.",
    version_latest: "Version {version} is the disk's latest version, which terminals boot: it can be deleted once a newer version exists.",
    version_base: "Version {version} is the base of the update in progress from terminal {terminal}: finish or cancel that update first.",
    last_update: "Last update",
    started: "Started",
    ended: "Ended",
    no_terminals: "No terminal has started an update yet.",
    role: "Role",
    admin_role: "Administrator",
    operator_role: "Operator",
    add_user: "Add user",
    change_role: "Change role",
    reset_password: "Reset password",
    new_password: "New password (8 characters or more)",
    delete_user_confirm: "Delete user {user}? Their sessions end; versions and updates keep the name.",
    user_added: "The user was added.",
    user_changed: "The user was changed.",
    user_deleted: "The user was deleted.",
    you: "(you)",
    short_password: "A password needs at least {min} characters.",
    own_account: "You cannot delete or demote your own account: another admin can.",
    user_exists: "User {user} already exists.",
    unknown_user: "There is no such user: reload the page.",
    filter: "Filter",
    any: "Any",
    live: "In progress",
    ended_updates: "Ended",
    stopped_by: "(by {user})",
    sent: "Received",
    confirm: "Confirm",
    verify_clean: "all well: {chunks} chunks checked",
    verify_found: "{damaged} damaged, {missing} missing, {unreadable} unreadable chunks, {manifests} unreadable manifests",
    verify_all: "(every chunk, --all)",
    gc_done: "{chunks} chunks deleted, {bytes} freed",
    upload_aborted_by: "(upload aborted by {user})",
};

pub static JA: Words = Words {
    console: "ほたてコンソール",
    updates: "更新状況",
    disks: "ディスク",
    store: "ストア",
    login: "ログイン",
    logout: "ログアウト",
    user: "ユーザー名",
    password: "パスワード",
    disk: "ディスク",
    terminal: "端末",
    state: "状態",
    progress: "進捗",
    rate: "速度",
    eta: "残り時間",
    base_version: "元のバージョン",
    new_version: "新しいバージョン",
    abort: "更新中断",
    abort_confirm: "端末 {terminal} によるディスク {disk} の更新を中断しますか?",
    abort_note: "実行中のアップロードを停止し、アップロード済みのデータは破棄されます。更新は「端末側で更新中」に戻ります。端末側で再度 `update finish` を実行すると、最初からアップロードします。",
    abort_done: "更新中断しました。端末側で再度 `update finish` を実行できます。",
    cancel: "更新取消",
    cancel_confirm: "端末 {terminal} によるディスク {disk} の更新を取り消しますか?",
    cancel_note: "更新は終了し、完了できなくなります。端末が戻らない場合にのみ使用してください。端末側の `update cancel` で端末は元に戻せます。",
    cancel_done: "更新を取り消しました。",
    back: "戻る",
    no_updates: "更新はありません。",
    older: "以前の更新",
    newest: "最新の更新",
    no_disks: "ディスクがありません。`hotate-server disk import NAME IMAGE` でインポートしてください。",
    reserved: "端末側で更新中",
    uploading: "アップロード中",
    waiting: "アップロード中 (接続待ち)",
    committed: "バージョン作成済み",
    cancelled: "キャンセル済み",
    aborted: "更新中断済み",
    name: "名前",
    size: "サイズ",
    block_size: "ブロックサイズ",
    latest_version: "最新バージョン",
    version_count: "バージョン数",
    stored_bytes: "保存量",
    versions: "バージョン",
    version: "バージョン",
    parent: "親バージョン",
    comment: "コメント",
    created_at: "作成日時",
    blocks_changed: "変更ブロック数",
    chunks: "チャンク数",
    store_bytes: "ストアのサイズ",
    live_updates: "更新中のディスク",
    uploading_now: "実行中のアップロード",
    counted_ago: "{secs} 秒前の集計です。",
    last_verify: "最後の検証 (verify)",
    last_gc: "最後の整理 (gc)",
    never_run: "未実行 (`hotate-server store verify`、`store gc`)",
    transfer_servers: "転送サーバー",
    transfer_server: "転送サーバー",
    alive: "稼働中",
    gone: "応答なし",
    last_seen: "最終応答",
    carried: "担当している更新",
    admins_only: "この操作は管理者のみ行えます。",
    live_link_lost: "自動更新が途切れました。再接続しています…",
    seconds: "秒",
    minutes: "分",
    hours: "時間",
    of: "/",
    not_found: "見つかりません。",
    session_expired: "ログインしていないか、セッションの有効期限が切れました。再度ログインしてください。",
    unknown_update: "その更新はありません。終了した可能性があります。ページを再読み込みしてください。",
    update_ended: "この更新はすでに「{state}」です。更新中断・更新取消するものはありません。",
    stale_page: "ページが古くなっています。再読み込みしてから再度お試しください。",
    cross_site: "{origin} のページからはこのサーバーを変更できません。",
    terminals: "端末",
    users: "ユーザー",
    download: "ダウンロード",
    edit_comment: "コメントを編集",
    save: "保存",
    delete: "削除",
    latest_mark: "最新",
    delete_version_confirm: "ディスク {disk} のバージョン {version} を削除しますか? 元に戻せません。領域は次の `store gc` で解放されます。",
    version_deleted: "バージョンを削除しました。",
    comment_saved: "コメントを保存しました。",
    version_latest: "バージョン {version} はディスクの最新バージョンで、端末が起動に使用しています。新しいバージョンができてから削除してください。",
    version_base: "バージョン {version} は端末 {terminal} で更新中の更新の元のバージョンです。先にその更新を完了するか取り消してください。",
    last_update: "最後の更新",
    started: "開始日時",
    ended: "終了日時",
    no_terminals: "まだ更新を開始した端末はありません。",
    role: "権限",
    admin_role: "管理者",
    operator_role: "オペレーター",
    add_user: "ユーザーを追加",
    change_role: "権限を変更",
    reset_password: "パスワードを再設定",
    new_password: "新しいパスワード (8 文字以上)",
    delete_user_confirm: "ユーザー {user} を削除しますか? ログイン中のセッションは終了します。バージョンと更新の記録には名前が残ります。",
    user_added: "ユーザーを追加しました。",
    user_changed: "ユーザーを変更しました。",
    user_deleted: "ユーザーを削除しました。",
    you: "(自分)",
    short_password: "パスワードは {min} 文字以上にしてください。",
    own_account: "自分自身のアカウントは削除・権限変更できません。別の管理者が行ってください。",
    user_exists: "ユーザー {user} はすでに存在します。",
    unknown_user: "そのユーザーは存在しません。ページを再読み込みしてください。",
    filter: "絞り込み",
    any: "すべて",
    live: "更新中",
    ended_updates: "終了",
    stopped_by: "(実行者: {user})",
    sent: "受信量",
    confirm: "確認",
    verify_clean: "異常なし: {chunks} チャンクを検証しました",
    verify_found: "破損 {damaged}、欠落 {missing}、読み取り不能 {unreadable} チャンク、読み取り不能なマニフェスト {manifests}",
    verify_all: "(全チャンク、--all)",
    gc_done: "{chunks} チャンクを削除し、{bytes} を解放しました",
    upload_aborted_by: "({user} が更新中断)",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_by_weight() {
        assert_eq!(Lang::from_accept("ja,en-US;q=0.9"), Lang::Ja);
        assert_eq!(Lang::from_accept("en-US,en;q=0.9,ja;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept("fr, ja-JP;q=0.5"), Lang::Ja);
        assert_eq!(Lang::from_accept("de"), Lang::En);
        assert_eq!(Lang::from_accept(""), Lang::En);
    }
}
