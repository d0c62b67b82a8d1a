//! The command line in Japanese: `--help` of every command and subcommand, and clap's
//! errors about the arguments. clap writes English; under `--lang ja` (or a Japanese
//! locale) the command tree gets these words instead, and errors are told here.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};

/// Japanese for each command (by its path of names) and each argument (by command path
/// and argument id). [`japanese`] applies them; a test checks none is missing.
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

const HELP: &str = "ヘルプを表示します";
const VERSION: &str = "バージョンを表示します";
const TEMPLATE: &str = "{about-with-newline}\n使い方: {usage}\n\n{all-args}{after-help}";

/// The command tree with Japanese help.
pub fn japanese(command: Command) -> Command {
    localize(command, "")
}

fn localize(command: Command, parent: &str) -> Command {
    let path = if parent.is_empty() {
        command.get_name().to_owned()
    } else {
        format!("{parent} {}", command.get_name())
    };
    let mut command = command
        .help_template(TEMPLATE)
        .subcommand_help_heading("コマンド")
        .disable_help_subcommand(true)
        .disable_help_flag(true)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::Help)
                .help(HELP)
                .global(parent.is_empty()),
        );
    if let Some(&(_, about)) = COMMANDS.iter().find(|(p, _)| *p == path) {
        command = command.about(about).long_about(None);
    }
    if command.get_version().is_some() {
        command = command.disable_version_flag(true).arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::Version)
                .help(VERSION),
        );
    }
    let ids: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for id in ids {
        let words = ARGS
            .iter()
            .find(|(p, a, _)| *p == path && *a == id)
            .map(|(_, _, words)| *words);
        command = command.mut_arg(id.as_str(), |arg| {
            let arg = arg.help_heading("オプション");
            match words {
                Some(words) => arg.help(words).long_help(None),
                None => arg,
            }
        });
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        let at = path.clone();
        command = command.mut_subcommand(name, move |sub| localize(sub, &at));
    }
    command
}

/// A command-line error in Japanese, with how to get help (for the errors clap prints
/// on stderr; help and version are not errors of this kind).
pub fn error(err: &clap::Error) -> String {
    let value = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(list)) => list.join(", "),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let arg = value(ContextKind::InvalidArg);
    let told = match err.kind() {
        ErrorKind::UnknownArgument => format!("不明な引数 {arg} です。"),
        ErrorKind::InvalidSubcommand => {
            format!(
                "不明なコマンド {} です。",
                value(ContextKind::InvalidSubcommand)
            )
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => format!(
            "{arg} の値 {} が正しくありません。",
            value(ContextKind::InvalidValue)
        ),
        ErrorKind::MissingRequiredArgument => format!("{arg} を指定してください。"),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "コマンドを指定してください。".to_owned()
        }
        ErrorKind::ArgumentConflict => format!("{arg} は他の引数と同時に指定できません。"),
        ErrorKind::TooManyValues | ErrorKind::WrongNumberOfValues | ErrorKind::TooFewValues => {
            format!("{arg} の値の数が正しくありません。")
        }
        ErrorKind::NoEquals => format!("{arg} には = で値を指定してください。"),
        _ => "コマンドラインが正しくありません。".to_owned(),
    };
    format!("エラー: {told}\n使い方は --help で表示できます。")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_is_wrong() {
        let command = japanese(
            Command::new("hotate-client")
                .arg(Arg::new("lang").long("lang"))
                .subcommand(Command::new("update")),
        );
        let unknown = command
            .clone()
            .try_get_matches_from(["hotate-client", "--frobnicate"])
            .expect_err("unknown");
        assert!(
            error(&unknown).contains("不明な引数 --frobnicate"),
            "{}",
            error(&unknown)
        );
        let sub = command
            .try_get_matches_from(["hotate-client", "updat"])
            .expect_err("unknown subcommand");
        assert!(
            error(&sub).contains("不明なコマンド updat"),
            "{}",
            error(&sub)
        );
    }
}
