//! Writes qcow2 (version 3) images: 64 KiB clusters, 16-bit refcounts, and only the
//! clusters given mapped — as data, or as zero clusters over a backing image. Everything
//! is laid out before the first byte is written (header, refcount table and blocks, L1,
//! the L2 tables in use, then the data clusters in guest order), so data streams in one
//! cluster at a time and every allocated cluster is referenced exactly once: `qemu-img
//! check` finds nothing to repair.

use std::fs::File;
use std::io;
use std::path::Path;

use super::{EXT_BACKING_FORMAT, MAGIC};
use crate::source::write_all_at;

/// The cluster size written.
pub const CLUSTER: u64 = 64 << 10;
const L2_ENTRIES: u64 = CLUSTER / 8;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;

/// How a guest cluster is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Its bytes are written.
    Data,
    /// It reads as zeros, whatever the backing image holds.
    Zero,
}

/// The backing image an overlay names.
#[derive(Debug, Clone)]
pub struct Backing {
    /// As the overlay names it (relative to the overlay, or absolute).
    pub name: String,
    /// `raw`, `qcow2` or `vhdx`.
    pub format: String,
}

/// Writes a qcow2 image of `size` bytes at `path` mapping the guest clusters in `plan`
/// (ascending); `fill` supplies a data cluster's bytes. Unmapped clusters are zeros, or
/// the backing image's.
///
/// # Errors
/// When the plan is not ascending or lies beyond the disk, or on an IO error.
pub fn write(
    path: &Path,
    size: u64,
    backing: Option<&Backing>,
    plan: &[(u64, Cluster)],
    mut fill: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let guest_clusters = size.div_ceil(CLUSTER);
    if plan.windows(2).any(|w| w[0].0 >= w[1].0)
        || plan.last().is_some_and(|l| l.0 >= guest_clusters)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the cluster plan is not ascending within the disk",
        ));
    }
    let l1_size = guest_clusters.div_ceil(L2_ENTRIES).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let mut tables: Vec<u64> = plan.iter().map(|(c, _)| c / L2_ENTRIES).collect();
    tables.dedup();
    let data = plan
        .iter()
        .filter(|(_, kind)| *kind == Cluster::Data)
        .count() as u64;
    // Refcount structures cover every cluster, themselves included: find the fixpoint.
    let (mut table_clusters, mut blocks) = (1u64, 1u64);
    let total = loop {
        let total = 1 + table_clusters + blocks + l1_clusters + tables.len() as u64 + data;
        let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let need_table = (need_blocks * 8).div_ceil(CLUSTER);
        if need_blocks == blocks && need_table == table_clusters {
            break total;
        }
        (blocks, table_clusters) = (need_blocks, need_table);
    };
    let refcount_table = CLUSTER;
    let refcount_blocks = refcount_table + table_clusters * CLUSTER;
    let l1_offset = refcount_blocks + blocks * CLUSTER;
    let l2_offset = l1_offset + l1_clusters * CLUSTER;
    let data_offset = l2_offset + tables.len() as u64 * CLUSTER;

    let file = File::create(path)?;
    file.set_len(total * CLUSTER)?;
    write_all_at(
        &file,
        &header(size, l1_size, l1_offset, table_clusters, backing),
        0,
    )?;
    let mut table = vec![0u8; (table_clusters * CLUSTER) as usize];
    for b in 0..blocks {
        let at = (b * 8) as usize;
        table[at..at + 8].copy_from_slice(&(refcount_blocks + b * CLUSTER).to_be_bytes());
    }
    write_all_at(&file, &table, refcount_table)?;
    let mut counts = vec![0u8; (blocks * CLUSTER) as usize];
    for c in 0..total {
        counts[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    write_all_at(&file, &counts, refcount_blocks)?;
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, t) in tables.iter().enumerate() {
        let at = (t * 8) as usize;
        l1[at..at + 8].copy_from_slice(&((l2_offset + i as u64 * CLUSTER) | COPIED).to_be_bytes());
    }
    write_all_at(&file, &l1, l1_offset)?;

    let mut l2 = vec![0u8; CLUSTER as usize];
    let mut cluster = vec![0u8; CLUSTER as usize];
    let mut next_data = data_offset;
    let mut planned = plan.iter().peekable();
    for (i, t) in tables.iter().enumerate() {
        l2.fill(0);
        while let Some(&&(c, kind)) = planned.peek() {
            if c / L2_ENTRIES != *t {
                break;
            }
            planned.next();
            let entry = match kind {
                Cluster::Zero => 1,
                Cluster::Data => {
                    cluster.fill(0);
                    let len = (size - c * CLUSTER).min(CLUSTER) as usize;
                    fill(c, &mut cluster[..len])?;
                    write_all_at(&file, &cluster, next_data)?;
                    next_data += CLUSTER;
                    (next_data - CLUSTER) | COPIED
                }
            };
            let at = ((c % L2_ENTRIES) * 8) as usize;
            l2[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        }
        write_all_at(&file, &l2, l2_offset + i as u64 * CLUSTER)?;
    }
    file.sync_all()
}

/// The header cluster: version 3, 64 KiB clusters, 16-bit refcounts, and the backing
/// image's format (an extension) and name.
fn header(
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    table_clusters: u64,
    backing: Option<&Backing>,
) -> Vec<u8> {
    let mut h = vec![0u8; CLUSTER as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
    h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    let mut at = 104;
    if let Some(backing) = backing {
        let format = backing.format.as_bytes();
        h[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        h[at + 4..at + 8].copy_from_slice(&(format.len() as u32).to_be_bytes());
        h[at + 8..at + 8 + format.len()].copy_from_slice(format);
        at += 8 + format.len().div_ceil(8) * 8;
    }
    at += 8; // the end of the extensions (type 0, length 0)
    if let Some(backing) = backing {
        let name = backing.name.as_bytes();
        h[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[at..at + name.len()].copy_from_slice(name);
    }
    h
}
