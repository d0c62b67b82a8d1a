//! `update clear-url` (alias `clearUrl`): forget the cached server URL.

use super::Context;

/// # Errors
/// When the cache file cannot be removed.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    if ctx.state.clear_url()? {
        crate::say!("{}", ctx.lang.url_cleared());
    } else {
        crate::say!("{}", ctx.lang.url_none());
    }
    Ok(())
}
