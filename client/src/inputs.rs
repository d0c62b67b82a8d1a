//! Inputs from flags, environment and prompts. Without a terminal a missing value is a
//! usage error naming its flag and variable, never a hang.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use crate::error::UsageError;
use crate::i18n::Lang;
use crate::state::StateDir;

/// What the command line and environment supplied.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password_stdin: bool,
    pub ca: Option<PathBuf>,
    /// Allow plain http to another host (the password crosses the network in clear).
    pub insecure: bool,
}

/// The login values of one run.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Prints `label` and reads one line from the terminal.
///
/// # Errors
/// A usage error saying `missing` when there is no terminal to ask.
pub fn ask(label: &str, missing: &str) -> anyhow::Result<String> {
    if !interactive() {
        return Err(UsageError(missing.to_owned()).into());
    }
    print!("{label}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The server URL: `--url`/`HOTATE_URL`, else the cached one, else asked. The caller
/// caches it with [`remember_url`] once that server answered, so a mistyped URL is not
/// kept.
///
/// # Errors
/// A usage error for a missing or malformed URL.
pub fn server_url(state: &StateDir, inputs: &Inputs, lang: Lang) -> anyhow::Result<String> {
    let url = match inputs.url.clone().or_else(|| state.url()) {
        Some(url) => url,
        None => {
            if interactive() {
                crate::say!("{}", lang.url_prompt());
            }
            ask(&lang.url_label(), &lang.url_missing())?
        }
    };
    let url = url.trim().trim_end_matches('/').to_owned();
    check_url(&url, lang)?;
    Ok(url)
}

/// Caches the URL of a server that answered, for the next commands.
///
/// # Errors
/// When the state dir cannot be written.
pub fn remember_url(state: &StateDir, url: &str) -> anyhow::Result<()> {
    if state.url().as_deref() != Some(url) {
        state.save_url(url)?;
    }
    Ok(())
}

fn check_url(url: &str, lang: Lang) -> Result<(), UsageError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| UsageError(lang.url_without_scheme(url)))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(UsageError(lang.url_without_host(url)));
    }
    Ok(())
}

/// User name and password: flags and environment first, then prompts (the password
/// shown as one `*` per character).
///
/// # Errors
/// A usage error when a value is missing and there is no terminal.
pub fn credentials(inputs: &Inputs, lang: Lang) -> anyhow::Result<Credentials> {
    let user = match inputs.user.clone() {
        Some(user) => user,
        None => ask(&lang.user_label(), &lang.user_missing())?,
    };
    let password = if let Ok(password) = std::env::var("HOTATE_PASSWORD") {
        password
    } else if inputs.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else if interactive() {
        // One `*` per character typed, as the manual shows.
        let masked = rpassword::ConfigBuilder::new()
            .password_feedback_mask('*')
            .build();
        rpassword::prompt_password_with_config(lang.password_label(), masked)?
    } else {
        return Err(UsageError(lang.password_missing()).into());
    };
    Ok(Credentials { user, password })
}

/// A version comment: any UTF-8 text without control characters.
///
/// # Errors
/// A usage error for control characters.
pub fn check_comment(comment: &str, lang: Lang) -> Result<(), UsageError> {
    if comment.chars().any(char::is_control) {
        return Err(UsageError(lang.comment_has_controls()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_comments_are_checked() {
        assert!(check_url("https://192.168.10.11:30806", Lang::En).is_ok());
        assert!(check_url("http://127.0.0.1:1", Lang::En).is_ok());
        assert!(check_url("ftp://x", Lang::En).is_err());
        assert!(check_url("https://", Lang::En).is_err());
        let ja = check_url("ftp://x", Lang::Ja).unwrap_err().to_string();
        assert!(ja.contains("https:// または http:// で始めて"), "{ja}");
        assert!(check_comment("ソフト更新 v2", Lang::En).is_ok());
        assert!(check_comment("bad\u{7}bell", Lang::En).is_err());
        let ja = check_comment("two\nlines", Lang::Ja)
            .unwrap_err()
            .to_string();
        assert!(ja.contains("制御文字"), "{ja}");
    }
}
