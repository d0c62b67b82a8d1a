//! `hotate-server cert generate`: a self-signed certificate for TLS tests and small sites.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

/// Writes `cert.pem` and `key.pem` (readable by its owner only) for `hosts` (names or IP
/// addresses) into `out`; an existing pair is kept unless `force`.
///
/// # Errors
/// When the pair exists (without `force`), the certificate cannot be made or the files
/// cannot be written.
pub fn generate(out: &Path, hosts: &[String], force: bool) -> anyhow::Result<()> {
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "{} already holds cert.pem or key.pem: pass --force to replace them",
            out.display()
        );
    }
    let certified =
        rcgen::generate_simple_self_signed(hosts.to_vec()).context("generating the certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&cert_path, certified.cert.pem())?;
    let _ = std::fs::remove_file(&key_path);
    let mut key =
        private_file(&key_path).with_context(|| format!("creating {}", key_path.display()))?;
    key.write_all(certified.signing_key.serialize_pem().as_bytes())?;
    key.sync_all()?;
    println!(
        "Wrote {} and {} (the key is readable by its owner only).",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Creates a new file that only its owner may read or write.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
