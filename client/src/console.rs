//! The Windows console: UTF-8 output, so Japanese messages read in `cmd.exe`, and the
//! user's display language. Elsewhere the terminal's locale already says both. On Unix,
//! output into a closed pipe ends the process quietly, as other tools do.
#![allow(unsafe_code)]

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

/// Ends the process quietly, as Unix tools do, when its output goes into a pipe that was
/// closed (`hotate-client update show | head -1`), instead of a panic about a broken
/// pipe. Network writes are unaffected: sockets are written with `MSG_NOSIGNAL`.
pub fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores one signal's default disposition at the start of `main`, before
    // any other thread runs; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
