//! `update clear-url` (alias `clearUrl`): forget the cached server URL.

use super::Context;

/// # Errors
/// When the cache file cannot be removed.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    if ctx.state.clear_url()? {
        println!("{}", ctx.lang.url_cleared());
    } else {
        println!("{}", ctx.lang.url_none());
    }
    Ok(())
}
