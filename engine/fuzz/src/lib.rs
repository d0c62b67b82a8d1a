//! What every image-reader fuzz target does with its input: writes it as an image file,
//! opens it, and reads what the pipeline and the finish would read. Any outcome but a
//! panic, or one allocation larger than the file (plus a read buffer), is a pass:
//! hostile images must fail with an error, and their tables cannot size memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use hotate_engine::direct_io::AlignedBuf;
use hotate_engine::source::{self, Format};

/// Bytes read at a time, as a block of the pipeline.
const PIECE: u64 = 64 << 10;
/// Pieces read of an opened image at most: its first, last and first extents.
const PIECES: usize = 8;
/// Allocation a reader may make beyond the file's size and a read buffer: a table's
/// worth of fixed overhead.
const SLACK: usize = 1 << 20;

/// The system allocator, noting the largest single allocation.
struct Watched;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// A directory of this process's own for the input file; it is named `input.EXT`, so a
/// backing name the fuzzer writes may point an image at itself.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hotate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        dir
    })
}

/// Opens `data` as an image of `format` and reads it.
pub fn exercise(format: Format, extension: &str, data: &[u8]) {
    let path = dir().join(format!("input.{extension}"));
    std::fs::write(&path, data).expect("the input file");
    LARGEST.store(0, Ordering::Relaxed);
    read_image(format, &path);
    let largest = LARGEST.load(Ordering::Relaxed);
    let bound = data.len() + PIECE as usize + SLACK;
    assert!(
        largest <= bound,
        "a {}-byte image made the reader allocate {largest} bytes at once",
        data.len()
    );
}

fn read_image(format: Format, path: &std::path::Path) {
    let Ok(image) = source::open(path, format, None) else {
        return;
    };
    let size = image.size();
    let extents = image.data_extents().unwrap_or_default();
    if let Some(Ok(top)) = image.top_layer_extents() {
        assert!(top.iter().all(|r| r.start <= r.end), "{top:?}");
    }
    let _ = image.layers();
    let _ = source::layers_below(image.as_ref());
    let starts = [0, size.saturating_sub(1) / PIECE * PIECE]
        .into_iter()
        .chain(extents.iter().map(|r| r.start / PIECE * PIECE));
    let mut buf = AlignedBuf::zeroed(PIECE as usize);
    for at in starts.take(PIECES).filter(|&at| at < size) {
        let len = PIECE.min(size - at) as usize;
        let _ = image.read_at(at, len, &mut buf);
    }
}
