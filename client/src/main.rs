//! `hotate-client`: parses the command line and runs the subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hotate_client::cmd::{self, BenchOptions, Context, FinishOptions};
use hotate_client::error::{UsageError, exit_code};
use hotate_client::i18n::Lang;
use hotate_client::inputs::Inputs;
use hotate_client::state::StateDir;

#[derive(Parser)]
#[command(name = "hotate-client", version, about = "Hotate terminal-side update")]
struct Cli {
    /// Where terminal.toml, the cached URL and the update record live.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Language of messages: en or ja (default: from LC_ALL/LANG, on Windows the display
    /// language).
    #[arg(long, global = true)]
    lang: Option<String>,
    /// Manage Server URL, e.g. https://192.168.10.11:30806 (cached after first use).
    #[arg(long, global = true, env = "HOTATE_URL")]
    url: Option<String>,
    /// User name for the Manage Server.
    #[arg(long, global = true, env = "HOTATE_USER")]
    user: Option<String>,
    /// Read the password from the first line of stdin (else HOTATE_PASSWORD or a prompt).
    #[arg(long, global = true)]
    password_stdin: bool,
    /// A private CA certificate (PEM) to trust for https.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Allow plain http:// to a server on another host (password and data unencrypted).
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Terminal-side update.
    #[command(subcommand)]
    Update(Update),
    /// Measure the link, the disk and this machine, and predict how long `update
    /// finish` would take and what bounds it. Changes nothing on the server.
    Bench {
        /// Print the measurements as JSON.
        #[arg(long)]
        json: bool,
        /// How long to measure the upload rate, in seconds.
        #[arg(long, default_value_t = 5.0)]
        link_seconds: f64,
        /// Predict a finish run with `--limit-rate` (bytes per second; k, m, g).
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Update {
    /// Reserve the disk and switch the write cache to non-restore.
    Start,
    /// Upload the changes and create the new version (resumes an interrupted upload).
    Finish {
        /// Version comment (default: "Updated on terminal NAME.").
        #[arg(long)]
        comment: Option<String>,
        /// Cap the upload, in bytes per second (suffixes k, m, g: 1024-based).
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
    },
    /// Release the reservation and restore the write cache.
    Cancel,
    /// Show the update in progress on this terminal.
    Show,
    /// Forget the cached server URL.
    #[command(alias = "clearUrl")]
    ClearUrl,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 'b'),
    };
    let factor: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?}: use k, m or g")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte rate"))?;
    if value == 0 {
        return Err("the rate must be above zero".into());
    }
    Ok(value.saturating_mul(factor))
}

fn main() -> ExitCode {
    hotate_client::console::use_utf8();
    let asked = Lang::detect(hotate_proto::cli_ja::lang_flag().as_deref());
    let japanese = (asked == Lang::Ja).then_some(&hotate_client::cli_ja::WORDS);
    let cli: Cli = match hotate_proto::cli_ja::parse(japanese) {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTATE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi({
            // Colour only on a terminal, and not when NO_COLOR is set.
            use std::io::IsTerminal;
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        })
        .without_time()
        .init();
    if let Some(lang) = cli.lang.as_deref()
        && !matches!(lang, "en" | "ja")
    {
        eprintln!(
            "error: {}",
            UsageError(format!("--lang must be en or ja, not {lang:?}"))
        );
        return ExitCode::from(2);
    }
    let lang = Lang::detect(cli.lang.as_deref());
    let ctx = Context {
        state: StateDir::locate(cli.state_dir, lang),
        lang,
        inputs: Inputs {
            url: cli.url,
            user: cli.user,
            password_stdin: cli.password_stdin,
            ca: cli.ca,
            insecure: cli.insecure,
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let command = match cli.command {
            Top::Update(command) => command,
            Top::Bench {
                json,
                link_seconds,
                limit_rate,
            } => {
                let options = BenchOptions {
                    json,
                    link_seconds,
                    limit_rate,
                };
                return cmd::bench::run(&ctx, &options).await;
            }
        };
        match command {
            Update::Start => cmd::start::run(&ctx).await,
            Update::Finish {
                comment,
                limit_rate,
            } => {
                cmd::finish::run(
                    &ctx,
                    &FinishOptions {
                        comment,
                        limit_rate,
                    },
                )
                .await
            }
            Update::Cancel => cmd::cancel::run(&ctx).await,
            Update::Show => cmd::show::run(&ctx),
            Update::ClearUrl => cmd::clear_url::run(&ctx),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and argument has Japanese help: one added without it fails here.
    #[test]
    fn every_command_and_argument_has_japanese_help() {
        let words = &hotate_client::cli_ja::WORDS;
        let mut command = hotate_proto::cli_ja::japanese(Cli::command(), words);
        command.build();
        let missing = hotate_proto::cli_ja::untranslated(&command);
        assert!(missing.is_empty(), "no Japanese help: {missing:?}");
    }
}
