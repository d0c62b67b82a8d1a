//! The Windows console: UTF-8 output, so Japanese messages read in `cmd.exe`, and the
//! user's display language. Elsewhere the terminal's locale already says both.
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
