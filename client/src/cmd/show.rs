//! `update show`: the update in progress on this terminal, from local state only.

use super::Context;

/// # Errors
/// When the local record cannot be read.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let lang = ctx.lang;
    match ctx.state.update()? {
        None => crate::say!("{}", lang.no_update()),
        Some(record) => {
            crate::say!("{}", lang.show_header());
            crate::say!("{}", lang.show_disk(&record.disk_id));
            crate::say!("{}", lang.show_guid(&record.data_write_guid));
            crate::say!("{}", lang.show_mode(record.write_cache_before.word()));
            show_image(ctx);
        }
    }
    Ok(())
}

/// The differential disk and, for an overlay, the parents it reads through.
fn show_image(ctx: &Context) {
    let lang = ctx.lang;
    let Ok(terminal) = ctx.state.terminal() else {
        return;
    };
    match terminal.open_image() {
        Ok(image) => {
            let layers = image.layers();
            let mut layers = layers.iter();
            if let Some(top) = layers.next() {
                crate::say!(
                    "{}",
                    lang.show_image(&top.display().to_string(), &terminal.format)
                );
            }
            for parent in layers {
                crate::say!("{}", lang.show_parent(&parent.display().to_string()));
            }
        }
        Err(e) => crate::say!(
            "{}",
            lang.show_image_unreadable(&terminal.image.display().to_string(), &e.to_string())
        ),
    }
}
