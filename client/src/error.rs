//! Client error policy: bad usage or bad local input is a [`UsageError`] (exit 2); any
//! other failure (server refused, network, conflict) exits 1. Messages say what to do.

/// A missing or invalid input, or bad local state: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An operation that failed, with its message for the user: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

/// The server could not be reached (network, DNS, refused, TLS): exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// The exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else {
        1
    }
}
