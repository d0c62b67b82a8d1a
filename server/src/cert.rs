//! `hotate-server cert generate`: a self-signed certificate for TLS tests and small sites.

use std::path::Path;

use anyhow::Context;

/// Writes `cert.pem` and `key.pem` for `hosts` (names or IP addresses) into `out`.
///
/// # Errors
/// When the certificate cannot be made or the files cannot be written.
pub fn generate(out: &Path, hosts: &[String]) -> anyhow::Result<()> {
    let certified =
        rcgen::generate_simple_self_signed(hosts.to_vec()).context("generating the certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("cert.pem"), certified.cert.pem())?;
    std::fs::write(out.join("key.pem"), certified.signing_key.serialize_pem())?;
    Ok(())
}
