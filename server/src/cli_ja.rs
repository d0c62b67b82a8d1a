//! The admin commands' command line in Japanese: the words of its `--help`, which
//! [`hotate_proto::cli_ja`] applies.

use hotate_proto::cli_ja::Words;

/// Japanese for each command (by its path of names) and each argument (by command path
/// and argument id); a test checks none is missing.
pub const WORDS: Words = Words {
    commands: COMMANDS,
    args: ARGS,
};

const COMMANDS: &[(&str, &str)] = &[
    ("hotate-server", "Hotate 管理サーバー (ManageServer)"),
    (
        "hotate-server serve",
        "制御サービスと転送サービスを起動します",
    ),
    ("hotate-server user", "ユーザーを管理します"),
    (
        "hotate-server user add",
        "ユーザーを追加します (8 文字以上のパスワードを HOTATE_PASSWORD から、なければ入力または標準入力から読みます)",
    ),
    ("hotate-server user list", "ユーザーと権限を一覧表示します"),
    (
        "hotate-server user delete",
        "ユーザーを削除し、そのセッションを終了します",
    ),
    (
        "hotate-server user passwd",
        "ユーザーのパスワードを設定し (`add` と同じ読み方)、そのセッションを終了します",
    ),
    ("hotate-server disk", "ディスクとバージョンを管理します"),
    (
        "hotate-server disk import",
        "ディスクイメージ (raw、qcow2、VHD、VHDX。内容から判別) を新しいディスクとして取り込みます",
    ),
    ("hotate-server disk list", "ディスクを一覧表示します"),
    (
        "hotate-server disk versions",
        "ディスクのバージョンを古い順に一覧表示します",
    ),
    (
        "hotate-server disk delete",
        "ディスクをバージョンごと削除します (更新中は --force がなければ拒否します)",
    ),
    (
        "hotate-server disk export",
        "バージョンをイメージ (raw、qcow2、VHDX、VHD) として書き出します。全チャンクを検証します",
    ),
    ("hotate-server update", "更新を表示・中断します"),
    ("hotate-server update list", "更新を一覧表示します"),
    (
        "hotate-server update abort",
        "ディスクの更新のアップロードを止めて破棄します (「更新中断」)。更新は残り、端末は `update finish` をやり直します",
    ),
    (
        "hotate-server update cancel",
        "端末が戻らないとき、ディスクの更新を終わらせます (「更新取消」)",
    ),
    ("hotate-server version", "バージョンを削除します"),
    (
        "hotate-server version delete",
        "バージョンを削除します (最新バージョンと、更新中の更新の元のバージョンは削除できません)",
    ),
    (
        "hotate-server store",
        "チャンクストアを検証・整理・集計します",
    ),
    (
        "hotate-server store verify",
        "参照されている全チャンクを読んで検証し、破損したものを隔離します。破損があれば終了コード 1",
    ),
    (
        "hotate-server store gc",
        "どこからも参照されていないチャンク、一時ファイル、マニフェストを削除します",
    ),
    (
        "hotate-server store stats",
        "保存されているチャンク数とバイト数、参照されていない数を表示します",
    ),
    (
        "hotate-server migrate",
        "このデータディレクトリ (ユーザー、ディスク、バージョン、マニフェスト、チャンク) を PostgreSQL や S3 バケットにコピーし、全チャンクを検証します。中断したら再度実行してください",
    ),
    ("hotate-server cert", "TLS の証明書"),
    (
        "hotate-server cert generate",
        "自己署名の cert.pem と key.pem を書き出します",
    ),
];

const DISK: &str = "ディスク名または UUID";

const ARGS: &[(&str, &str, &str)] = &[
    (
        "hotate-server",
        "data",
        "データディレクトリ (メタデータ、チャンクストア、マニフェスト)",
    ),
    (
        "hotate-server",
        "meta",
        "複数のサーバーで共有するメタデータのデータベース: postgres://USER@HOST:PORT/DB (PostgreSQL 13 以降)。指定しなければデータディレクトリの SQLite",
    ),
    (
        "hotate-server",
        "store",
        "チャンクとマニフェストを置く S3 互換バケット: s3://BUCKET/PREFIX (エンドポイントとキーは AWS_ENDPOINT_URL、AWS_ACCESS_KEY_ID、AWS_SECRET_ACCESS_KEY、AWS_REGION、AWS_ALLOW_HTTP)。指定しなければデータディレクトリの store/ と manifests/",
    ),
    (
        "hotate-server",
        "json",
        "一覧を機械可読な JSON で出力します",
    ),
    (
        "hotate-server",
        "lang",
        "メッセージの言語: en または ja (既定: LC_ALL または LANG、なければ en)",
    ),
    (
        "hotate-server serve",
        "role",
        "all: 制御ポート (コンソールを含む) と転送ポートを 1 つのプロセスで。control: 制御ポートのみ。アップロードはメタデータに登録された転送サーバーに渡します。transfer: 転送ポートのみ。--advertise-transfer としてハートビート付きで登録します。all 以外は --meta (共有データベース) が必要です",
    ),
    (
        "hotate-server serve",
        "listen",
        "制御ポートのアドレス: 端末のログインと更新、コンソール",
    ),
    (
        "hotate-server serve",
        "transfer_listen",
        "転送ポートのアドレス: アップロード",
    ),
    (
        "hotate-server serve",
        "advertise_transfer",
        "クライアントに伝える転送エンドポイント (例 https://files.example:30811)。--role transfer では登録する URL で、端末から到達できる必要があります",
    ),
    (
        "hotate-server serve",
        "tls_cert",
        "TLS 証明書チェーン (PEM): 両ポートとも TLS のみになります",
    ),
    (
        "hotate-server serve",
        "tls_key",
        "--tls-cert の秘密鍵 (PEM)",
    ),
    (
        "hotate-server serve",
        "max_connections",
        "ポートごとの同時接続数。超えた接続はすぐ閉じます",
    ),
    (
        "hotate-server serve",
        "max_connections_per_address",
        "そのうち 1 つのアドレスからの数 [既定: --max-connections の半分]",
    ),
    (
        "hotate-server serve",
        "max_uploads",
        "同時に受けるアップロードの数。超えた分には再試行を求めます",
    ),
    (
        "hotate-server serve",
        "handshake_timeout",
        "新しい接続が話し始め、アップロードが `open` を送るまでの期限",
    ),
    (
        "hotate-server serve",
        "idle_timeout",
        "接続が無通信でいられる時間 (クライアントは 30 秒ごとに ping します)",
    ),
    (
        "hotate-server serve",
        "login_concurrency",
        "同時に行うパスワード照合 (argon2、1 回約 19 MiB) の数 [既定: コア数]",
    ),
    (
        "hotate-server serve",
        "public_metrics",
        "/metrics を誰にでも公開します (既定ではループバックとログイン済みの相手のみ)",
    ),
    ("hotate-server serve", "json", "serve では使いません"),
    (
        "hotate-server user add",
        "name",
        "端末とコンソールでログインに使うユーザー名",
    ),
    (
        "hotate-server user add",
        "role",
        "admin (更新中断や管理もできます) または operator (自分の更新のみ)。既定では最初のユーザーが admin、以降は operator",
    ),
    ("hotate-server user delete", "name", "ユーザー名"),
    ("hotate-server user passwd", "name", "ユーザー名"),
    ("hotate-server disk import", "name", "新しいディスクの名前"),
    ("hotate-server disk import", "image", "イメージファイル"),
    (
        "hotate-server disk import",
        "block_size",
        "ブロックサイズ (バイト、2 の累乗): 重複排除と転送の単位",
    ),
    (
        "hotate-server disk import",
        "comment",
        "最初のバージョンのコメント",
    ),
    ("hotate-server disk versions", "disk", DISK),
    ("hotate-server disk delete", "disk", DISK),
    (
        "hotate-server disk delete",
        "force",
        "ディスクで進行中の更新を先に中断します",
    ),
    ("hotate-server disk export", "disk", DISK),
    (
        "hotate-server disk export",
        "version",
        "書き出すバージョン [既定: 最新]",
    ),
    (
        "hotate-server disk export",
        "output",
        "書き出すイメージファイル",
    ),
    (
        "hotate-server disk export",
        "format",
        "raw、qcow2、vhdx、vhd (--parent 付きでは差分イメージ)",
    ),
    (
        "hotate-server disk export",
        "parent",
        "この以前のバージョンとの差分だけを、そのイメージの差分イメージ (qcow2 のオーバーレイ、vhdx・vhd の差分ディスク) として書き出します",
    ),
    (
        "hotate-server disk export",
        "parent_image",
        "そのバージョンのイメージの場所 [既定: 出力と同じ場所の PARENT.FORMAT]",
    ),
    ("hotate-server update abort", "disk", DISK),
    ("hotate-server update cancel", "disk", DISK),
    ("hotate-server version delete", "disk", DISK),
    (
        "hotate-server version delete",
        "version",
        "削除するバージョン",
    ),
    (
        "hotate-server store verify",
        "all",
        "参照の有無にかかわらずストアの全チャンクを検証します",
    ),
    (
        "hotate-server store gc",
        "dry_run",
        "削除されるものを数えるだけで、何も削除しません",
    ),
    (
        "hotate-server migrate",
        "to_meta",
        "コピー先のメタデータ: postgres://USER@HOST:PORT/DB",
    ),
    (
        "hotate-server migrate",
        "to_store",
        "コピー先のストア: s3://BUCKET/PREFIX (エンドポイントは AWS_* 変数で指定)",
    ),
    (
        "hotate-server cert generate",
        "out",
        "cert.pem と key.pem を書き出すディレクトリ",
    ),
    (
        "hotate-server cert generate",
        "host",
        "端末がサーバーに接続するときのホスト名とアドレス (1 つ以上)",
    ),
    (
        "hotate-server cert generate",
        "force",
        "既存の証明書と鍵を置き換えます",
    ),
];
