//! The client command line in Japanese: the words of its `--help`, which
//! [`hotate_proto::cli_ja`] applies.

use hotate_proto::cli_ja::Words;

/// Japanese for each command (by its path of names) and each argument (by command path
/// and argument id); a test checks none is missing.
pub const WORDS: Words = Words {
    commands: COMMANDS,
    args: ARGS,
};

const COMMANDS: &[(&str, &str)] = &[
    ("hotate-client", "Hotate 端末側の更新"),
    ("hotate-client update", "端末側の更新"),
    (
        "hotate-client update start",
        "ディスクを予約し、Write Cache を非復元モードに切り替えます",
    ),
    (
        "hotate-client update finish",
        "変更をアップロードして新しいバージョンを作成します (中断したアップロードは再開します)",
    ),
    (
        "hotate-client update cancel",
        "予約を解除し、Write Cache を元に戻します",
    ),
    (
        "hotate-client update show",
        "この端末で実行中の更新を表示します",
    ),
    (
        "hotate-client update clear-url",
        "キャッシュされた ManageServer の URL を削除します",
    ),
    (
        "hotate-client bench",
        "回線・ディスク・この端末を測定し、`update finish` の所要時間と律速要因を予測します (サーバー側は何も変更しません)",
    ),
];

const ARGS: &[(&str, &str, &str)] = &[
    (
        "hotate-client",
        "state_dir",
        "terminal.toml、キャッシュされた URL、更新の記録を置くディレクトリ",
    ),
    (
        "hotate-client",
        "lang",
        "メッセージの言語: en または ja (既定: LC_ALL/LANG、Windows では表示言語)",
    ),
    (
        "hotate-client",
        "url",
        "ManageServer の URL (例 https://192.168.10.11:30806)。初回の後はキャッシュされます",
    ),
    ("hotate-client", "user", "ManageServer のユーザー名"),
    (
        "hotate-client",
        "password_stdin",
        "パスワードを標準入力の 1 行目から読みます (既定: HOTATE_PASSWORD、なければ入力を求めます)",
    ),
    (
        "hotate-client",
        "ca",
        "https で信頼するプライベート CA の証明書 (PEM)",
    ),
    (
        "hotate-client",
        "insecure",
        "他のホストへの http:// を許可します (パスワードとデータは暗号化されません)",
    ),
    (
        "hotate-client update finish",
        "comment",
        "バージョンのコメント (既定: 「Updated on terminal NAME.」)",
    ),
    (
        "hotate-client update finish",
        "limit_rate",
        "アップロードの上限 (バイト/秒。k, m, g の接尾辞は 1024 倍)",
    ),
    (
        "hotate-client bench",
        "json",
        "測定結果を JSON で出力します",
    ),
    (
        "hotate-client bench",
        "link_seconds",
        "アップロード速度を測定する秒数",
    ),
    (
        "hotate-client bench",
        "limit_rate",
        "`--limit-rate` 付きの finish を予測します (バイト/秒。k, m, g)",
    ),
];
