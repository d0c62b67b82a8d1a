//! The memory window: a pool of aligned read buffers (one span of blocks each) behind a
//! semaphore.
//!
//! Every span held in memory is a [`Lease`]: a place in the window, and the buffer it is
//! read into when it is read at all (an image that lives in memory is used in place).
//! The lease owns a permit, so at most `window / span` spans are held at once, and
//! returns its buffer to the pool when the last `Bytes` viewing the span (a block of it)
//! is dropped, so steady state allocates nothing (fresh large allocations would cost a
//! page fault per 4 KiB).

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

    /// Waits for room in the window.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let permit = self.permits.clone().acquire_owned().await?;
        Ok(Lease {
            buf: None,
            pool: self.clone(),
            _permit: permit,
        })
    }
}

/// One place in the window and its buffer, returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    buf: Option<AlignedBuf>,
    pool: Arc<BlockBuffers>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The buffer to read the span into, from the pool.
    pub fn buf_mut(&mut self) -> &mut AlignedBuf {
        let pool = &self.pool;
        self.buf.get_or_insert_with(|| {
            pool.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_else(|| AlignedBuf::zeroed(pool.buf_size))
        })
    }

    /// Freezes the filled buffer into shareable bytes; the lease ends with the last view.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(Held {
            lease: self,
            span: None,
        })
    }

    /// Makes `span`, already in memory, hold this place in the window until its last view
    /// is dropped.
    pub fn hold(self, span: Bytes) -> Bytes {
        Bytes::from_owner(Held {
            lease: self,
            span: Some(span),
        })
    }
}

/// The bytes of a span and its place in the window.
struct Held {
    lease: Lease,
    /// The span where it was not read into the lease's buffer.
    span: Option<Bytes>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        match &self.span {
            Some(span) => span,
            None => self.lease.buf.as_deref().unwrap_or_default(),
        }
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
