//! `update show`: the update in progress on this terminal, from local state only.

use super::Context;

/// # Errors
/// When the local record cannot be read.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let lang = ctx.lang;
    match ctx.state.update()? {
        None => println!("{}", lang.no_update()),
        Some(record) => {
            println!("{}", lang.show_header());
            println!("{}", lang.show_disk(&record.disk_id));
            println!("{}", lang.show_guid(&record.data_write_guid));
            println!("{}", lang.show_mode(record.write_cache_before.word()));
        }
    }
    Ok(())
}
