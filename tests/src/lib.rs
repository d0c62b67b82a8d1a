//! Shared pieces of the end-to-end tests, the demo and the throughput bench: the real
//! binaries as processes ([`harness`]), realistic disk images ([`images`]), and an HTTP
//! client ([`http`]) and a browser ([`webdriver`]) for the console.

pub mod faultdisk;
pub mod harness;
pub mod http;
pub mod images;
pub mod webdriver;
