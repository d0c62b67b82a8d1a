//! The Windows console: UTF-8 output, so Japanese messages read in `cmd.exe`, and the
//! user's display language. Elsewhere the terminal's locale already says both. Output
//! goes through [`say!`](crate::say), which a closed pipe does not stop.
#![cfg_attr(windows, allow(unsafe_code))]

/// Code page 65001.
#[cfg(windows)]
const UTF8: u32 = 65001;

#[cfg(windows)]
#[link(name = "kernel32")]
unsafe extern "system" {
    fn SetConsoleOutputCP(code_page: u32) -> i32;
    fn SetConsoleCP(code_page: u32) -> i32;
    fn GetUserDefaultUILanguage() -> u16;
}

/// Prints a line on stdout, like `println!`, except that a stdout that cannot take it (a
/// pipe whose reader has gone, as in `update show | head -1`) is no failure: the line is
/// dropped and the command goes on to do its work (a finish must not stop half-way
/// because its log reader went away), instead of a panic about a broken pipe.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say_line(format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn say_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
}

/// Switches the console to UTF-8, for output and for what is typed at prompts.
pub fn use_utf8() {
    #[cfg(windows)]
    // SAFETY: both calls only set the console's code page; they fail harmlessly (for
    // example without a console, output redirected) and the result is not needed.
    unsafe {
        SetConsoleOutputCP(UTF8);
        SetConsoleCP(UTF8);
    }
}

/// Whether the user's display language is Japanese (Windows); `None` where the
/// environment (`LANG`) says it instead.
pub fn prefers_japanese() -> Option<bool> {
    #[cfg(windows)]
    {
        const LANG_JAPANESE: u16 = 0x11;
        // SAFETY: takes no arguments and only reads the user's setting.
        let language = unsafe { GetUserDefaultUILanguage() };
        Some(language & 0x3ff == LANG_JAPANESE)
    }
    #[cfg(not(windows))]
    None
}
