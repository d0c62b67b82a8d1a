//! The Hotate management server: holds disks and their versions, knows which terminal is
//! updating which disk, receives uploads and turns them into versions.
//!
//! [`serve`] runs the gRPC services and the console; [`app`] is the one application
//! layer they and the [`admin`] commands share.

pub mod admin;
mod app;
mod auth;
pub mod cert;
pub mod cli_ja;
mod console;
mod control;
mod data;
mod error;
mod export;
mod gate;
pub mod limits;
mod live;
mod manifests;
mod meta;
pub mod migrate;
mod pace;
mod parallel;
pub mod s3;
pub mod serve;
mod text;
mod throttle;
mod transfer;
mod upkeep;

pub use console::Lang;
pub use data::DataDir;
pub use data::Places;
pub use error::ServerError;
pub use serve::{ServeOptions, ServeRole, serve, shutdown_signal};
