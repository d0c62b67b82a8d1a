//! The Hotate management server: holds disks and their versions, knows which terminal is
//! updating which disk, receives uploads and turns them into versions.
//!
//! [`serve`] runs the gRPC services and the console; [`app`] is the one application
//! layer they and the [`admin`] commands share.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cert;
pub mod console;
pub mod control;
pub mod data;
pub mod error;
pub mod export;
pub mod gate;
pub mod limits;
pub mod live;
pub mod meta;
pub mod serve;
pub mod text;
pub mod throttle;
pub mod transfer;
pub mod upkeep;

pub use data::DataDir;
pub use error::ServerError;
pub use serve::{ServeOptions, serve, shutdown_signal};
