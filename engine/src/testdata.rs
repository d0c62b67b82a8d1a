//! Shared test data: the table of interesting sizes and deterministic content.

/// Block size the size table is built around (the smallest allowed).
pub const TEST_BLOCK: usize = 64 << 10;

/// Sizes that exercise the edges: empty, one byte, around one block, many blocks, and an
/// unaligned tail. Used by the reader, splitter and store tests.
pub const SIZES: &[usize] = &[
    0,
    1,
    TEST_BLOCK - 1,
    TEST_BLOCK,
    TEST_BLOCK + 1,
    TEST_BLOCK * 7,
    TEST_BLOCK * 5 + 1000,
];

/// Deterministic, moderately compressible content of `len` bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let word = (x >> 33) as u8;
        // Runs of repeated bytes make the content compressible, like real files.
        let run = 1 + (x >> 60) as usize;
        out.extend(std::iter::repeat_n(word | 1, run.min(len - out.len())));
    }
    out
}

/// An endless xorshift sequence from `seed` (not zero): the random offsets and values
/// of the mutation tests.
#[cfg(unix)] // Only the tests that run Linux tools use it (Wine cannot start them).
pub fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |&x| {
        let x = x ^ (x << 13);
        let x = x ^ (x >> 7);
        Some(x ^ (x << 17))
    })
    .skip(1)
}

/// A temporary directory on a memory filesystem (tmpfs), where the system has one.
pub fn memory_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir_in("/dev/shm").ok()?;
    let probe = std::fs::File::create(dir.path().join("probe")).ok()?;
    crate::direct_io::is_memory_backed(&probe).then_some(dir)
}

/// Rounds of the image parsers' mutation tests: `HOTATE_FUZZ_ROUNDS`, else `default`
/// (a short run in CI; `benches/fuzz-images.sh` runs long ones).
#[cfg(unix)] // Only the tests that run Linux tools use it (Wine cannot start them).
pub fn mutation_rounds(default: usize) -> usize {
    std::env::var("HOTATE_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `tool` (qemu-img or qemu-io, from qemu-utils) and panics with its stderr when it
/// fails.
#[cfg(unix)] // Only the tests that run Linux tools use it (Wine cannot start them).
pub fn run_tool<S: AsRef<std::ffi::OsStr>>(tool: &str, args: &[S]) {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed (qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the machine has `what` (a tool a test compares with). When it does not, the
/// test says what it leaves out and why, except under `CI=true`, where that fails it: so
/// `cargo test` passes on a fresh machine and CI runs everything.
///
/// # Panics
/// Under `CI=true` when `what` is missing.
#[cfg(unix)] // Only the comparisons with Linux tools need it (Wine cannot start them).
pub fn present(test: &str, what: &str, found: bool) -> bool {
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs {what}, and CI must run it");
    }
    if !found {
        eprintln!("SKIPPED in {test}: the comparison with {what}, which this machine lacks");
    }
    found
}

/// Whether `python3` can import libvhdi's binding (Debian `python3-libvhdi`).
#[cfg(unix)]
pub fn has_libvhdi() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import pyvhdi"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// What libvhdi (`python3-libvhdi`), a reader independent of ours, reads of the VHD or
/// VHDX image `child` with `parent` set; `None` (said) on a machine without it.
#[cfg(unix)] // Only the tests that run Linux tools use it (Wine cannot start them).
pub fn libvhdi_read(
    test: &str,
    child: &std::path::Path,
    parent: &std::path::Path,
) -> Option<Vec<u8>> {
    if !present(test, "libvhdi (Debian python3-libvhdi)", has_libvhdi()) {
        return None;
    }
    let script = format!(
        "import pyvhdi, sys\n\
         child = pyvhdi.file(); child.open({child:?})\n\
         parent = pyvhdi.file(); parent.open({parent:?})\n\
         child.set_parent(parent)\n\
         sys.stdout.buffer.write(child.read_buffer_at_offset(child.media_size, 0))\n",
        child = child.to_str().expect("utf-8 path"),
        parent = parent.to_str().expect("utf-8 path"),
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with python3-libvhdi");
    assert!(
        out.status.success(),
        "libvhdi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}
