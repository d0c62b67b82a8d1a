//! The memory window: a pool of aligned read buffers (one span of blocks each) behind a
//! semaphore.
//!
//! Every span held in memory is a [`Lease`] of one buffer. The lease owns a permit, so at
//! most `window / span` buffers exist at once, and returns its buffer to the pool when
//! the last `Bytes` viewing it (a block of the span) is dropped, so steady state allocates nothing (fresh
//! large allocations would cost a page fault per 4 KiB).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::direct_io::AlignedBuf;

/// Aligned buffers of one size, at most `capacity` in use.
#[derive(Debug)]
pub(crate) struct BlockBuffers {
    buf_size: usize,
    permits: Arc<Semaphore>,
    free: Mutex<Vec<AlignedBuf>>,
}

impl BlockBuffers {
    pub fn new(buf_size: usize, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            buf_size,
            permits: Arc::new(Semaphore::new(capacity)),
            free: Mutex::new(Vec::with_capacity(capacity)),
        })
    }

    /// Waits for room in the window and lends a buffer.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let permit = self.permits.clone().acquire_owned().await?;
        let buf = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(self.buf_size));
        Ok(Lease {
            buf: Some(buf),
            pool: self.clone(),
            _permit: permit,
        })
    }
}

/// One buffer of the window, returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    buf: Option<AlignedBuf>,
    pool: Arc<BlockBuffers>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub fn buf_mut(&mut self) -> &mut AlignedBuf {
        self.buf.get_or_insert_with(|| AlignedBuf::zeroed(0))
    }

    /// Freezes the filled buffer into shareable bytes; the lease ends with the last view.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf);
        }
    }
}
