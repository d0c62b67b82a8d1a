//! Every message the client prints, in English and Japanese.
//!
//! Japanese follows the wording of the original product's manual. The language comes from
//! `--lang`, else `LC_ALL`/`LANG` (`ja*` → Japanese), else English.

use std::fmt::Display;

/// The language of the client's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    /// From `--lang`, else the environment (`LC_ALL`, `LANG`), else (on Windows) the
    /// user's display language.
    pub fn detect(flag: Option<&str>) -> Self {
        match hotate_proto::Language::from_locale(flag) {
            Some(hotate_proto::Language::Ja) => Self::Ja,
            Some(hotate_proto::Language::En) => Self::En,
            None if crate::console::prefers_japanese() == Some(true) => Self::Ja,
            None => Self::En,
        }
    }

    /// The wire's name of this language, for the refusals the server names.
    pub fn language(self) -> hotate_proto::Language {
        match self {
            Self::En => hotate_proto::Language::En,
            Self::Ja => hotate_proto::Language::Ja,
        }
    }

    fn pick(self, en: impl Display, ja: impl Display) -> String {
        match self {
            Self::En => en.to_string(),
            Self::Ja => ja.to_string(),
        }
    }

    pub fn url_prompt(self) -> String {
        self.pick(
            "Enter the Manage Server URL (e.g. https://192.168.10.11:30806/).",
            "Manage Server の URL を入力してください (例 : https://192.168.10.11:30806/)。",
        )
    }
    pub fn url_label(self) -> String {
        self.pick("Server URL: ", "サーバー URL: ")
    }
    pub fn user_label(self) -> String {
        self.pick("User name: ", "ユーザー名: ")
    }
    pub fn password_label(self) -> String {
        self.pick("Password: ", "パスワード: ")
    }
    pub fn comment_prompt(self, default: &str) -> String {
        self.pick(
            format!("Version comment (optional; empty for \"{default}\"): "),
            format!("バージョンのコメントを入力してください (省略可、省略時は「{default}」): "),
        )
    }
    pub fn default_comment(self, terminal: &str) -> String {
        self.pick(
            format!("Updated on terminal {terminal}."),
            format!("端末 {terminal} で更新しました。"),
        )
    }
    pub fn connected(self) -> String {
        self.pick(
            "Connected to the Manage Server.",
            "ManageServer に接続しました。",
        )
    }
    pub fn disabling_restore(self) -> String {
        self.pick(
            "Disabling restore (write cache: non-restore).",
            "復元を無効に変更します。",
        )
    }
    pub fn started(self) -> String {
        self.pick("Update started.", "更新を開始しました。")
    }
    pub fn unreachable(self, url: &str, cause: &str) -> String {
        self.pick(
            format!(
                "Cannot connect to the Manage Server at {url}: {cause}. Check the network and the URL (`update clear-url` forgets a wrong one)."
            ),
            format!(
                "ManageServer ({url}) に接続できません: {cause}。ネットワークと URL を確認してください (誤った URL は `update clear-url` で削除できます)。"
            ),
        )
    }
    pub fn name_not_found(self, host: &str) -> String {
        self.pick(
            format!("the name {host} was not found"),
            format!("名前 {host} が見つかりません"),
        )
    }
    pub fn connection_refused(self) -> String {
        self.pick(
            "the connection was refused (is the server running, and is the port right?)",
            "接続が拒否されました (サーバーが起動しているか、ポート番号が正しいか確認してください)",
        )
    }
    pub fn connection_timed_out(self) -> String {
        self.pick("no answer in time", "時間内に応答がありません")
    }
    pub fn host_unreachable(self) -> String {
        self.pick(
            "the network cannot reach the host",
            "ネットワークからホストに到達できません",
        )
    }
    pub fn tls_failed(self, cause: &str) -> String {
        self.pick(
            format!(
                "the TLS handshake failed ({cause}); a server with a private CA needs `--ca FILE`"
            ),
            format!(
                "TLS の確認に失敗しました ({cause})。プライベート CA のサーバーには `--ca FILE` を指定してください"
            ),
        )
    }
    pub fn plain_http_refused(self, url: &str) -> String {
        self.pick(
            format!(
                "Refusing plain http to {url}: the password and the disk's data would cross the network unencrypted. Use https:// (the server's --tls-cert), or pass --insecure on a trusted network."
            ),
            format!(
                "{url} への暗号化されていない http 接続は行いません (パスワードとディスクのデータが平文で送られます)。https:// を使用するか (サーバーの --tls-cert)、信頼できるネットワークでは --insecure を指定してください。"
            ),
        )
    }
    pub fn expects_tls(self, url: &str) -> String {
        self.pick(
            format!(
                "The Manage Server at {url} expects TLS: use https:// instead of http:// (`update clear-url` forgets a cached URL)."
            ),
            format!(
                "{url} の ManageServer は TLS 接続を待っています: http:// ではなく https:// を使用してください (キャッシュされた URL は `update clear-url` で削除できます)。"
            ),
        )
    }
    pub fn not_hotate(self, url: &str) -> String {
        self.pick(
            format!(
                "{url} answers, but it is a web server (HTTP/1), not a Hotate Manage Server: check the URL and its port (the Manage Server listens on 30806; `update clear-url` forgets a cached URL)."
            ),
            format!(
                "{url} は応答しましたが、Hotate の ManageServer ではなく Web サーバー (HTTP/1) です。URL とポート番号を確認してください (ManageServer のポートは 30806 です。キャッシュされた URL は `update clear-url` で削除できます)。"
            ),
        )
    }
    pub fn unknown_disk_id(self, disk_id: &str, terminal_toml: &str) -> String {
        self.pick(
            format!(
                "The Manage Server has no disk {disk_id}, the disk_id in {terminal_toml}: check disk_id there (the terminal's boot environment writes it)."
            ),
            format!(
                "ManageServer にディスク {disk_id} がありません ({terminal_toml} の disk_id)。{terminal_toml} の disk_id を確認してください。"
            ),
        )
    }
    pub fn server_busy(self, cause: &str) -> String {
        self.pick(
            format!("The Manage Server is busy ({cause})."),
            format!("ManageServer が混雑しています ({cause})。"),
        )
    }
    pub fn waiting_for_server(self, secs: u64) -> String {
        self.pick(
            format!("The Manage Server is busy with other uploads; retrying in {secs} s..."),
            format!("ManageServer がほかのアップロードを処理中です。{secs} 秒後に再試行します..."),
        )
    }
    pub fn image_is_not_a_file(self, path: &str, kind: &str) -> String {
        let ja_kind = match kind {
            "directory" => "ディレクトリ",
            "named pipe (FIFO)" => "名前付きパイプ (FIFO)",
            "character device" => "キャラクターデバイス",
            "block device" => "ブロックデバイス",
            "socket" => "ソケット",
            _ => "通常のファイルではないもの",
        };
        self.pick(
            format!(
                "The differential disk {path} is a {kind}, not an image file; check `image` in terminal.toml."
            ),
            format!(
                "差分ディスク {path} は{ja_kind}で、イメージファイルではありません。terminal.toml の `image` を確認してください。"
            ),
        )
    }
    pub fn image_missing(self, path: &str) -> String {
        self.pick(
            format!("The differential disk {path} does not exist; check `image` in terminal.toml."),
            format!(
                "差分ディスク {path} が存在しません。terminal.toml の `image` を確認してください。"
            ),
        )
    }
    pub fn image_shrunk(self, path: &str) -> String {
        self.pick(
            format!(
                "The differential disk {path} was truncated while it was read. Nothing is lost: run `hotate-client update finish` again once nothing writes to it."
            ),
            format!(
                "読み込み中に差分ディスク {path} が切り詰められました。データは失われていません。書き込みが終わってから再度 `hotate-client update finish` を実行してください。"
            ),
        )
    }
    pub fn top_layer_only(self, top: &str, disk: &str) -> String {
        self.pick(
            format!("Reading only the overlay's changes: {top} MB of the {disk} MB disk."),
            format!("差分ディスクの変更部分のみを読み込みます: {disk} MB 中 {top} MB。"),
        )
    }
    pub fn terminal_unreadable(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("Cannot read {path}: {cause}. The boot environment writes it; see docs/terminals.md for its fields."),
            format!("{path} を読み込めません: {cause}。ブート環境が書き込むファイルです。項目は docs/terminals.md を参照してください。"),
        )
    }
    pub fn file_malformed(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("{path} is malformed: {cause}"),
            format!("{path} の形式が正しくありません: {cause}"),
        )
    }
    pub fn url_without_scheme(self, url: &str) -> String {
        self.pick(
            format!("The server URL {url:?} must start with https:// or http://."),
            format!("サーバー URL {url:?} は https:// または http:// で始めてください。"),
        )
    }
    pub fn bench_needs_update(self) -> String {
        self.pick(
            "`hotate-client bench` predicts the finish of the update in progress, and this terminal has none: run `hotate-client update start` first.",
            "`hotate-client bench` は更新中の更新の完了を予測しますが、この端末は更新中ではありません。先に `hotate-client update start` を実行してください。",
        )
    }
    pub fn comment_has_controls(self) -> String {
        self.pick(
            "The version comment contains control characters (a line break, a tab...): use plain text on one line.",
            "バージョンのコメントに制御文字 (改行、タブなど) が含まれています。1 行のテキストを入力してください。",
        )
    }
    pub fn url_without_host(self, url: &str) -> String {
        self.pick(
            format!("The server URL {url:?} has no host."),
            format!("サーバー URL {url:?} にホスト名がありません。"),
        )
    }
    pub fn url_malformed(self, url: &str, cause: &str) -> String {
        self.pick(
            format!("The server URL {url:?} is malformed: {cause}"),
            format!("サーバー URL {url:?} の形式が正しくありません: {cause}"),
        )
    }
    pub fn ca_unreadable(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("Cannot read the CA file {path}: {cause}"),
            format!("CA ファイル {path} を読み込めません: {cause}"),
        )
    }
    pub fn url_missing(self) -> String {
        self.pick(
            "The server URL is missing: pass --url URL or set HOTATE_URL.",
            "サーバー URL がありません: --url URL を指定するか HOTATE_URL を設定してください。",
        )
    }
    pub fn user_missing(self) -> String {
        self.pick(
            "The user name is missing: pass --user NAME or set HOTATE_USER.",
            "ユーザー名がありません: --user NAME を指定するか HOTATE_USER を設定してください。",
        )
    }
    pub fn password_missing(self) -> String {
        self.pick(
            "The password is missing: set HOTATE_PASSWORD or pass --password-stdin.",
            "パスワードがありません: HOTATE_PASSWORD を設定するか --password-stdin を指定してください。",
        )
    }
    /// Opening a volume or disk (`\\.\C:`) was refused: Windows wants an administrator.
    pub fn needs_administrator(self, path: &str) -> String {
        self.pick(
            format!(
                "Opening {path} needs administrator rights: run hotate-client from an administrator command prompt (right-click Command Prompt, Run as administrator)."
            ),
            format!(
                "{path} を開くには管理者権限が必要です。管理者として実行したコマンドプロンプトから hotate-client を実行してください (コマンドプロンプトを右クリックし「管理者として実行」)。"
            ),
        )
    }
    pub fn image_unopenable(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("Cannot open the differential disk {path}: {cause}"),
            format!("差分ディスク {path} を開けません: {cause}"),
        )
    }
    pub fn image_wrong_size(self, path: &str, size: u64, disk: u64) -> String {
        let truncated = size < disk;
        self.pick(
            format!(
                "The differential disk {path} is {size} bytes but the disk is {disk} bytes{}.",
                if truncated { " (truncated?)" } else { "" }
            ),
            format!(
                "差分ディスク {path} は {size} バイトですが、ディスクは {disk} バイトです{}。",
                if truncated {
                    " (途中で切れていませんか?)"
                } else {
                    ""
                }
            ),
        )
    }
    pub fn image_unreadable(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("Reading the differential disk {path} failed: {cause}"),
            format!("差分ディスク {path} の読み込みに失敗しました: {cause}"),
        )
    }
    pub fn bad_base_manifest(self, cause: &str) -> String {
        self.pick(
            format!("The base version's manifest from the server is damaged: {cause}. Run `update finish` again."),
            format!("サーバーから受け取った元のバージョンのマニフェストが壊れています: {cause}。再度 `update finish` を実行してください。"),
        )
    }
    pub fn kept_manifest_stale(self) -> String {
        self.pick(
            "The base version's manifest kept since `update start` does not match the server's. It has been discarded; run `update finish` again.",
            "`update start` 以降保持していた元のバージョンのマニフェストがサーバーのものと一致しません。破棄しました。再度 `update finish` を実行してください。",
        )
    }
    pub fn upload_not_opened(self) -> String {
        self.pick(
            "The server did not open the upload. Run `update finish` again.",
            "サーバーがアップロードを開始しませんでした。再度 `update finish` を実行してください。",
        )
    }
    pub fn layers_recorded(self, count: usize) -> String {
        self.pick(
            format!("Recorded the {count} image(s) below the overlay; `update finish` checks they stay unchanged."),
            format!("差分ディスクの親イメージ {count} 個を記録しました。`update finish` で変更がないことを確認します。"),
        )
    }
    pub fn layers_changed(self, path: &str, was: &str, now: &str) -> String {
        self.pick(
            format!(
                "The images below the overlay {path} changed since `update start`: it was over {was}, now over {now}. Its top layer no longer holds this update's changes alone. Put the parent image back, or run `hotate-client update cancel` and start again."
            ),
            format!(
                "差分ディスク {path} の親イメージが `update start` の後に変わりました (開始時: {was}、現在: {now})。親イメージを元に戻すか、`hotate-client update cancel` で端末を元に戻してから再度更新を開始してください。"
            ),
        )
    }
    pub fn overlay_not_on_base(self, path: &str, version: &str, block: u64) -> String {
        self.pick(
            format!(
                "The overlay {path} does not sit on version {version}: block {block} of the layers below differs from it. Set `parent` in terminal.toml to the image of version {version}."
            ),
            format!(
                "差分ディスク {path} の親イメージがバージョン {version} ではありません (ブロック {block} が異なります)。terminal.toml の `parent` にバージョン {version} のイメージを指定してください。"
            ),
        )
    }
    pub fn already_started(self, guid: &str) -> String {
        self.pick(
            format!(
                "An update is already in progress on this terminal (DataWriteGuid {guid}). Run `update finish` or `update cancel`."
            ),
            format!(
                "この端末ではすでに端末側更新中です (DataWriteGuid {guid})。`update finish` または `update cancel` を実行してください。"
            ),
        )
    }
    pub fn no_update(self) -> String {
        self.pick(
            "No update in progress on this terminal.",
            "端末側更新中ではありません",
        )
    }
    pub fn no_update_hint(self) -> String {
        self.pick(
            "No update in progress on this terminal: run `hotate-client update start` first.",
            "端末側更新中ではありません。先に `hotate-client update start` を実行してください。",
        )
    }
    pub fn establishing(self, endpoint: &str) -> String {
        self.pick(
            format!("Establishing session with {endpoint}..."),
            format!("{endpoint} に対してセッションを確立します..."),
        )
    }
    pub fn established(self, endpoint: &str) -> String {
        self.pick(
            format!("Session established with {endpoint}."),
            format!("{endpoint} とセッションを確立しました。"),
        )
    }
    pub fn resuming(self, mb: &str) -> String {
        self.pick(
            format!(
                "Resuming: the server already holds {mb} MB of this upload; it is not sent again."
            ),
            format!("前回のアップロードを再開します: サーバーにある {mb} MB は再送しません。"),
        )
    }
    pub fn percent(self, pct: u64, done: &str, total: &str) -> String {
        self.pick(
            format!("{pct}% complete... ({done} MB / {total} MB)"),
            format!("{pct}% 完了... ({done} MB / {total} MB)"),
        )
    }
    pub fn rate_eta(self, rate: &str, eta: &str) -> String {
        self.pick(
            format!("{rate} MB/s, {eta} left"),
            format!("{rate} MB/s、残り {eta}"),
        )
    }
    pub fn write_cache_restoring(self, mode: WriteCacheWord) -> String {
        self.pick(
            format!("Setting the write cache back to {} mode...", mode.en()),
            format!("Write Cache を{}モードに戻します...", mode.ja()),
        )
    }
    pub fn write_cache_restored(self, mode: WriteCacheWord) -> String {
        self.pick(
            format!("The write cache is back in {} mode.", mode.en()),
            format!("Write Cache を{}モードに戻しました。", mode.ja()),
        )
    }
    pub fn clearing_state(self) -> String {
        self.pick(
            "Clearing the terminal's update state...",
            "端末側の更新状態を解除します...",
        )
    }
    pub fn cleared_state(self) -> String {
        self.pick(
            "The terminal's update state is cleared.",
            "端末側の更新状態を解除しました。",
        )
    }
    pub fn finished(self) -> String {
        self.pick("Update finished.", "更新完了しました。")
    }
    pub fn new_version(self, version: &str) -> String {
        self.pick(
            format!("New version: {version}"),
            format!("新しいバージョン: {version}"),
        )
    }
    pub fn bench_started(self, url: &str) -> String {
        self.pick(
            format!("Measuring the link to {url}, the disk and this machine (nothing changes on the server)..."),
            format!("{url} への回線、ディスク、この端末の性能を測定しています (サーバー側は何も変更しません)..."),
        )
    }
    pub fn bench_rtt(self, ms: &str) -> String {
        self.pick(
            format!("Round trip to the server: {ms} ms"),
            format!("サーバーとの往復時間: {ms} ミリ秒"),
        )
    }
    pub fn bench_link(self, rate: &str, measured: &str) -> String {
        self.pick(
            format!("Upload to the server: {rate} MB/s ({measured} MB sent)"),
            format!("サーバーへのアップロード速度: {rate} MB/s ({measured} MB 送信)"),
        )
    }
    pub fn bench_disk(self, rate: &str) -> String {
        self.pick(
            format!("Disk read (unbuffered): {rate} MB/s"),
            format!("ディスク読み込み (バッファなし): {rate} MB/s"),
        )
    }
    pub fn bench_cpu(self, hash: &str, compress: &str, level: i32, cores: usize) -> String {
        self.pick(
            format!("Hashing: {hash} MB/s, compression (zstd {level}): {compress} MB/s, on {cores} cores"),
            format!("ハッシュ計算: {hash} MB/s、圧縮 (zstd {level}): {compress} MB/s ({cores} コア)"),
        )
    }
    pub fn bench_bytes(self, read: &str, changed: &str, send: &str, secs: &str) -> String {
        self.pick(
            format!("A finish would read {read} MB, find {changed} MB changed and send {send} MB (dry run: {secs} s)."),
            format!("更新終了では {read} MB を読み込み、変更 {changed} MB のうち {send} MB を送信します (試行: {secs} 秒)。"),
        )
    }
    pub fn bench_bound(self, stage: &str, secs: &str) -> String {
        let (en, ja) = match stage {
            "disk" => ("the disk read", "ディスクの読み込み"),
            "hashing" => ("hashing", "ハッシュ計算"),
            "compression" => ("compression", "圧縮"),
            _ => ("the link", "回線"),
        };
        self.pick(
            format!("Bound by: {en} ({secs} s alone)"),
            format!("律速段階: {ja} (単独で {secs} 秒)"),
        )
    }
    pub fn bench_predicted(self, secs: &str) -> String {
        self.pick(
            format!("Predicted `update finish`: {secs} s"),
            format!("`update finish` の予測所要時間: {secs} 秒"),
        )
    }
    pub fn bench_no_link(self) -> String {
        self.pick(
            "The server acknowledged nothing during the link measurement: check the network, or measure longer with --link-seconds.",
            "回線の測定中にサーバーから応答がありませんでした。ネットワークを確認するか、--link-seconds で測定時間を延ばしてください。",
        )
    }
    pub fn summary(self, image: &str, changed: &str, sent: &str, secs: &str, rate: &str) -> String {
        self.pick(
            format!("Image {image} MB, changed {changed} MB, sent {sent} MB in {secs} s ({rate} MB/s of image)."),
            format!("イメージ {image} MB、変更 {changed} MB、送信 {sent} MB、{secs} 秒 (イメージ {rate} MB/s)。"),
        )
    }
    pub fn interrupted(self) -> String {
        self.pick(
            "Upload interrupted. Run `hotate-client update finish` again to resume: what the server already holds is not sent again.",
            "アップロードを中断しました。再度 `hotate-client update finish` を実行すると続きから再開します (サーバーにあるデータは再送しません)。",
        )
    }
    pub fn connection_lost(self, cause: &str) -> String {
        self.pick(
            format!(
                "The connection to the Manage Server was lost ({cause}). Run `hotate-client update finish` again to resume: what the server already holds is not sent again."
            ),
            format!(
                "ManageServer との接続が切れました ({cause})。再度 `hotate-client update finish` を実行すると続きから再開します (サーバーにあるデータは再送しません)。"
            ),
        )
    }
    pub fn adopted(self, guid: &str) -> String {
        self.pick(
            format!(
                "This terminal already held the disk (DataWriteGuid {guid}) from an update start that was interrupted; that update is taken back."
            ),
            format!(
                "中断された更新開始でこの端末が確保していたディスク (DataWriteGuid {guid}) を引き継ぎます。"
            ),
        )
    }
    pub fn already_committed(self, version: &str) -> String {
        self.pick(
            format!(
                "The update cannot be cancelled: the server already committed it as version {version}. This terminal is left as after `update finish`."
            ),
            format!(
                "サーバーはすでにこの更新をバージョン {version} として確定しているため、キャンセルできません。端末は `update finish` 完了後と同じ状態にしました。"
            ),
        )
    }
    pub fn cancelled(self) -> String {
        self.pick("Update cancelled.", "更新停止状態に変更しました。")
    }
    pub fn cancel_unreachable(self, cause: &str) -> String {
        self.pick(
            format!(
                "Warning: the server could not release the reservation ({cause}). This terminal is restored anyway; an administrator can run `hotate-server update abort DISK`."
            ),
            format!(
                "警告: サーバー側の予約を解除できませんでした ({cause})。端末側は元に戻します。管理者は `hotate-server update abort DISK` で解除できます。"
            ),
        )
    }
    pub fn show_header(self) -> String {
        self.pick(
            "Update in progress on this terminal.",
            "端末側で更新中です。",
        )
    }
    pub fn show_disk(self, id: &str) -> String {
        self.pick(
            format!("  Disk ID:              {id}"),
            format!("  ディスク ID:    {id}"),
        )
    }
    pub fn show_guid(self, guid: &str) -> String {
        self.pick(
            format!("  DataWriteGuid:        {guid}"),
            format!("  DataWriteGuid:      {guid}"),
        )
    }
    pub fn show_mode(self, mode: WriteCacheWord) -> String {
        self.pick(
            format!("  Write cache before:   {}", mode.en()),
            format!(
                "  更新前の復元状態: {}",
                match mode {
                    WriteCacheWord::Restore => "復元あり",
                    WriteCacheWord::NonRestore => "復元なし",
                }
            ),
        )
    }
    pub fn show_image(self, path: &str, format: &str) -> String {
        self.pick(
            format!("  Differential disk:    {path} ({format})"),
            format!("  差分ディスク:     {path} ({format})"),
        )
    }
    pub fn show_parent(self, path: &str) -> String {
        self.pick(
            format!("    on parent:          {path}"),
            format!("    親イメージ:     {path}"),
        )
    }
    pub fn show_image_unreadable(self, path: &str, cause: &str) -> String {
        self.pick(
            format!("  Differential disk:    {path} (cannot be read: {cause})"),
            format!("  差分ディスク:     {path} (読み込めません: {cause})"),
        )
    }
    pub fn url_cleared(self) -> String {
        self.pick(
            "The cached server URL is cleared.",
            "キャッシュされたサーバー URL を削除しました。",
        )
    }
    pub fn url_none(self) -> String {
        self.pick(
            "No server URL is cached.",
            "キャッシュされたサーバー URL はありません。",
        )
    }
}

/// A write-cache mode as a word in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCacheWord {
    Restore,
    NonRestore,
}

impl WriteCacheWord {
    fn en(self) -> &'static str {
        match self {
            Self::Restore => "restore",
            Self::NonRestore => "non-restore",
        }
    }
    fn ja(self) -> &'static str {
        match self {
            Self::Restore => "復元",
            Self::NonRestore => "非復元",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_ja_is_recognised() {
        assert_eq!(Lang::detect(Some("ja")), Lang::Ja);
        assert_eq!(Lang::detect(Some("ja_JP.UTF-8")), Lang::Ja);
        assert_eq!(Lang::detect(Some("en")), Lang::En);
        let not_latest = hotate_proto::Refusal::NotLatest {
            latest: "c3066470".into(),
            booted: "cbf4cdc8".into(),
        };
        assert!(
            not_latest
                .words(Lang::Ja.language())
                .contains("(最新=c3066470, 起動=cbf4cdc8)")
        );
        assert_eq!(
            Lang::Ja.percent(0, "0", "1,265"),
            "0% 完了... (0 MB / 1,265 MB)"
        );
        assert!(
            Lang::Ja
                .needs_administrator(r"\\.\C:")
                .contains("管理者として実行")
        );
        assert!(
            Lang::En
                .needs_administrator(r"\\.\C:")
                .contains("administrator command prompt")
        );
    }
}
