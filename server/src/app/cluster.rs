//! Several server processes on one metadata database (`serve --role control|transfer`):
//! transfer servers say they are alive, and a control server hands each upload to one of
//! them: the one that carries it while it lives, else the one carrying fewest.

use std::time::Duration;

use serde::Serialize;

use super::{App, time_text};
use crate::error::ServerError;
use crate::meta::{TransferRow, now};

/// How often a transfer server says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A transfer server not heard from for longer is taken as gone: a terminal that runs
/// `update finish` again after its transfer server died is handed another one.
pub const GONE_AFTER_SECS: i64 = 3;

/// A transfer server as listed (console, API).
#[derive(Debug, Clone, Serialize)]
pub struct TransferView {
    pub url: String,
    pub alive: bool,
    pub started_at: String,
    pub seen_at: String,
    /// Upload streams it carried when last heard from.
    pub uploads: u64,
    /// Live updates handed to it.
    pub carried: u64,
}

fn alive(row: &TransferRow, at: i64) -> bool {
    at - row.seen_at <= GONE_AFTER_SECS
}

impl App {
    /// Every registered transfer server.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn transfer_servers(&self) -> Result<Vec<TransferView>, ServerError> {
        let at = now();
        Ok(self
            .data
            .meta()
            .transfer_servers()?
            .into_iter()
            .map(|row| TransferView {
                alive: alive(&row, at),
                started_at: time_text(row.started_at),
                seen_at: time_text(row.seen_at),
                url: row.url,
                uploads: row.uploads,
                carried: row.carried,
            })
            .collect())
    }

    /// The transfer server to carry update `guid`'s upload (recorded), or any upload's
    /// when `guid` is `None`: the one it was handed to while that one lives, else the
    /// live one carrying fewest updates.
    ///
    /// # Errors
    /// `NoTransferServer` when none is alive; the metadata's errors.
    pub fn carrier_for(&self, guid: Option<&str>) -> Result<String, ServerError> {
        let meta = self.data.meta();
        let at = now();
        let live: Vec<TransferRow> = meta
            .transfer_servers()?
            .into_iter()
            .filter(|row| alive(row, at))
            .collect();
        if let Some(guid) = guid
            && let Some(url) = meta.carrier(guid)?
            && live.iter().any(|row| row.url == url)
        {
            return Ok(url);
        }
        let chosen = live
            .iter()
            .min_by_key(|row| (row.carried, row.uploads, &row.url))
            .ok_or(ServerError::NoTransferServer)?;
        if let Some(guid) = guid {
            meta.set_carrier(guid, &chosen.url)?;
            tracing::info!(update = guid, transfer = %chosen.url, "upload handed to a transfer server");
        }
        Ok(chosen.url.clone())
    }

    /// Says that this transfer server, reached at `url`, is alive, with what its upload
    /// streams have done.
    ///
    /// # Errors
    /// When the metadata cannot be written.
    pub fn transfer_alive(&self, url: &str) -> Result<(), ServerError> {
        Ok(self.data.meta().transfer_alive(url, &self.live.reports())?)
    }

    /// Shows, on this control server, the progress the transfer servers report.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn mirror_transfers(&self) -> Result<(), ServerError> {
        let reports = self.data.meta().upload_reports(now() - GONE_AFTER_SECS)?;
        self.live.mirror(reports);
        Ok(())
    }

    /// Says that this transfer server stops.
    ///
    /// # Errors
    /// When the metadata cannot be written.
    pub fn transfer_gone(&self, url: &str) -> Result<(), ServerError> {
        Ok(self.data.meta().transfer_gone(url)?)
    }
}
