//! Strings from outside (terminal and user names, comments): bounded and free of control
//! characters before they are stored, and escaped wherever stored text is printed.

use crate::error::ServerError;

/// Longest terminal, user or disk name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest version comment, in bytes.
pub const MAX_COMMENT: usize = 4096;
/// Most bytes of an error message sent back: what a request sent is never echoed whole.
pub const MAX_ERROR: usize = 1024;

/// Characters that change how text around them shows without showing themselves: bidi
/// controls (a name could read backwards) and zero-width characters (two names could
/// look the same).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Whether a character may not be stored as text: control or invisible.
fn is_hidden(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// `text` cut to at most `max` bytes at a character boundary, marked `…` when cut.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

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
    if text.chars().any(is_hidden) {
        return Err(ServerError::BadRequest(format!(
            "the {what} contains control or invisible characters (bidi controls, zero-width \
             spaces); use plain text"
        )));
    }
    Ok(())
}

/// Stored text made safe for a terminal: control and invisible characters escaped
/// (`\u{1b}`, `\u{202e}`), so no escape sequence, forged line break or reversed text
/// reaches the screen.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(is_hidden) {
        text.chars()
            .map(|c| {
                if is_hidden(c) {
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
        // Bidi controls and zero-width characters, as names and as printed.
        for hidden in [
            "PC\u{202E}100-CP",
            "PC\u{200B}-001",
            "\u{FEFF}PC",
            "a\u{2066}b",
        ] {
            assert!(check_name("terminal name", hidden).is_err(), "{hidden:?}");
        }
        assert_eq!(printable("PC\u{202E}1"), "PC\\u{202e}1");
        // Errors quote at most a bounded part of what was sent.
        let long = "é".repeat(5000);
        let cut = bounded(&long, MAX_ERROR);
        assert!(cut.len() < MAX_ERROR + 32, "{}", cut.len());
        assert!(cut.ends_with("(10000 bytes)"));
        assert_eq!(bounded("short", MAX_ERROR), "short");
    }
}

/// A size in binary units, as disks and blocks are measured: `256.0 MiB`, `1.0 MiB`,
/// `512 B`. Listings for people use it; `--json` keeps the exact bytes.
pub fn binary_size(bytes: u64) -> String {
    size_in(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"])
}

/// Bytes in decimal units, as transfers are counted (like the client's progress).
pub fn decimal_size(bytes: u64) -> String {
    size_in(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB"])
}

/// `bytes` in the largest of `units` (each `step` times the one before) under `step`.
fn size_in(bytes: u64, step: f64, units: &[&str]) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod size_tests {
    use super::binary_size;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(binary_size(512), "512 B");
        assert_eq!(binary_size(1 << 20), "1.0 MiB");
        assert_eq!(binary_size(256 << 20), "256.0 MiB");
        assert_eq!(binary_size(64 << 30), "64.0 GiB");
        assert_eq!(binary_size(1536), "1.5 KiB");
        assert_eq!(super::decimal_size(999), "999 B");
        assert_eq!(super::decimal_size(268_435_456), "268.4 MB");
    }
}
