//! Store calls a few at a time. An object store answers each call after a round trip, so
//! a batch's reads overlap instead of queueing; a local store gains the cores for the
//! verification they include.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Calls at once.
pub const AT_ONCE: usize = 8;
/// Bytes of blocks read at once by calls that each read one (see [`for_blocks`]).
const BYTES_AT_ONCE: usize = 8 << 20;

/// How many calls that each read a block of `max_len` bytes run at once: memory stays
/// within [`BYTES_AT_ONCE`] (one at a time for blocks as large or larger).
pub fn for_blocks(max_len: usize) -> usize {
    (BYTES_AT_ONCE / max_len.max(1)).clamp(1, AT_ONCE)
}

/// `f` of each item, at most `at_once` at a time, in the items' order.
pub fn map_at_once<T: Sync, R: Send>(
    items: &[T],
    at_once: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if items.len() <= 1 || at_once <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..at_once.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let r = f(item);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_and_calls_overlap() {
        let items: Vec<u64> = (0..40).collect();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let out = map_at_once(&items, AT_ONCE, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!(most > 1 && most <= AT_ONCE, "{most} at once");
        assert_eq!(for_blocks(1 << 20), AT_ONCE);
        assert_eq!(for_blocks(16 << 20), 1, "large blocks one at a time");
    }
}
