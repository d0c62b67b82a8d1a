//! Strings from outside (terminal and user names, comments): bounded and free of control
//! characters before they are stored, and escaped wherever stored text is printed.

use crate::error::ServerError;

/// Longest terminal, user or disk name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest version comment, in bytes.
pub const MAX_COMMENT: usize = 4096;

/// Refuses an empty or over-long name, or one with control characters.
///
/// # Errors
/// `BadRequest` naming `what`.
pub fn check_name(what: &str, name: &str) -> Result<(), ServerError> {
    if name.trim().is_empty() {
        return Err(ServerError::BadRequest(format!("the {what} is empty")));
    }
    check(what, name, MAX_NAME)
}

/// Refuses an over-long comment or one with control characters.
///
/// # Errors
/// `BadRequest`.
pub fn check_comment(comment: &str) -> Result<(), ServerError> {
    check("version comment", comment, MAX_COMMENT)
}

fn check(what: &str, text: &str, max: usize) -> Result<(), ServerError> {
    if text.len() > max {
        return Err(ServerError::BadRequest(format!(
            "the {what} is {} bytes; at most {max} are allowed",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(format!(
            "the {what} contains control characters; use plain text"
        )));
    }
    Ok(())
}

/// Stored text made safe for a terminal: control characters escaped (`\u{1b}`), so no
/// escape sequence or forged line break reaches the screen.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_comments_are_bounded_and_plain() {
        assert!(check_name("terminal name", "PC-001").is_ok());
        assert!(check_name("terminal name", "端末-01").is_ok());
        assert!(check_name("terminal name", "").is_err());
        assert!(check_name("terminal name", &"x".repeat(129)).is_err());
        assert!(check_name("terminal name", "PC\u{1b}]0;owned\u{7}").is_err());
        assert!(check_comment("line\nforged").is_err());
        assert!(check_comment(&"c".repeat(4096)).is_ok());
        assert!(check_comment(&"c".repeat(4097)).is_err());
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("plain"), "plain");
    }
}
