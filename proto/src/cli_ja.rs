//! The command line in Japanese, for both binaries: `--help` of every command and
//! subcommand, and clap's errors about the arguments. clap writes English; under
//! `--lang ja` (or a Japanese locale) the command tree gets a binary's [`Words`]
//! instead, and errors are told here.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};

/// A binary's Japanese: for each command (by its path of names, `hotate-server disk
/// import`) its description, and for each argument (by command path and argument id)
/// its help.
#[derive(Debug)]
pub struct Words {
    pub commands: &'static [(&'static str, &'static str)],
    pub args: &'static [(&'static str, &'static str, &'static str)],
}

/// Parses the command line as `P`, with Japanese help and errors when given `japanese`
/// words. On `--help`, `--version` or an error it prints what clap or [`error`] says and
/// gives the exit code: 0 after help, 2 after an error.
///
/// # Errors
/// The exit code, when the program should end.
pub fn parse<P: clap::Parser>(japanese_words: Option<&Words>) -> Result<P, u8> {
    let command = match japanese_words {
        Some(words) => japanese(P::command(), words),
        None => P::command(),
    };
    let parsed = command
        .try_get_matches()
        .and_then(|matches| P::from_arg_matches(&matches));
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(e) if japanese_words.is_some() && e.use_stderr() => {
            eprintln!("{}", error(&e));
            Err(2)
        }
        Err(e) => {
            let _ = e.print();
            Err(if e.use_stderr() { 2 } else { 0 })
        }
    }
}

/// The value of `--lang` on the command line, looked at before it is parsed: the help
/// and the errors of the parse are in that language.
pub fn lang_flag() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--lang" {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix("--lang=") {
            return Some(value.to_owned());
        }
    }
    None
}

/// What in a built command tree has no Japanese: the commands without a Japanese
/// description and the arguments without Japanese help, by path (for the binaries'
/// tests).
pub fn untranslated(command: &Command) -> Vec<String> {
    fn japanese(text: Option<String>) -> bool {
        text.is_some_and(|t| !t.is_ascii())
    }
    fn walk(command: &Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", command.get_name())
            .trim_start()
            .to_owned();
        if !japanese(command.get_about().map(ToString::to_string)) {
            missing.push(path.clone());
        }
        for arg in command.get_arguments() {
            if !japanese(arg.get_help().map(ToString::to_string)) {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(command, "", &mut missing);
    missing
}

const HELP: &str = "ヘルプを表示します";
const VERSION: &str = "バージョンを表示します";
const TEMPLATE: &str = "{about-with-newline}\n使い方: {usage}\n\n{all-args}{after-help}";

/// The command tree with Japanese help from `words`.
pub fn japanese(command: Command, words: &Words) -> Command {
    localize(command, "", words)
}

fn localize(command: Command, parent: &str, words: &Words) -> Command {
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
                .display_order(usize::MAX)
                .global(parent.is_empty()),
        );
    if let Some(&(_, about)) = words.commands.iter().find(|(p, _)| *p == path) {
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
        let help = words
            .args
            .iter()
            .find(|(p, a, _)| *p == path && *a == id)
            .map(|(_, _, help)| *help);
        command = command.mut_arg(id.as_str(), |arg| {
            let heading = if arg.is_positional() {
                "引数"
            } else {
                "オプション"
            };
            let arg = arg.help_heading(heading);
            match help {
                // The Japanese help tells the values; clap's list of them is English.
                Some(help) if arg.get_action().takes_values() => {
                    arg.help(help).long_help(None).hide_possible_values(true)
                }
                Some(help) => arg.help(help).long_help(None),
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
        command = command.mut_subcommand(name, move |sub| localize(sub, &at, words));
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
        let words = Words {
            commands: &[("hotate-client", "端末側の更新")],
            args: &[("hotate-client", "lang", "メッセージの言語")],
        };
        let command = japanese(
            Command::new("hotate-client")
                .arg(Arg::new("lang").long("lang"))
                .subcommand(Command::new("update")),
            &words,
        );
        let mut built = command.clone();
        built.build();
        assert_eq!(untranslated(&built), ["hotate-client update"]);
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
