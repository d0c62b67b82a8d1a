//! Shared pieces of the end-to-end tests, the demo and the throughput bench: the real
//! binaries as processes ([`harness`]) and realistic disk images ([`images`]).

pub mod harness;
pub mod images;
