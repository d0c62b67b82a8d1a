//! The Hotate terminal client: `update start / finish / cancel / show / clear-url`.
//!
//! [`cmd`] holds one module per subcommand; [`upload`] drives the engine pipeline over
//! the transfer service; [`state`] keeps what must survive between runs.

pub mod cli_ja;
pub mod cmd;
pub mod console;
pub mod error;
pub mod i18n;
pub mod inputs;
mod progress;
mod server;
pub mod state;
mod upload;
