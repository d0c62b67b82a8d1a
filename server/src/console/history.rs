//! The updates' listing a page at a time: `?state=&disk=&terminal=&user=&limit=&before=`
//! of `GET /` and `GET /api/v1/updates`. Live updates (at most one per disk) come first,
//! then ended ones, newest first, `limit` at a time; the next page starts `before` the
//! last one listed.

use serde::{Deserialize, Serialize};

use crate::app::{App, UpdateView};
use crate::error::ServerError;
use crate::meta::{UpdateQuery, WhichUpdates};

/// Ended updates on a page unless `limit` says otherwise.
pub const PAGE: usize = 50;
/// Ended updates on a page at most.
pub const MAX_PAGE: usize = 500;

/// The listing's parameters, as a query string holds them (a form's empty field is
/// no filter).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub terminal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
}

impl History {
    /// Ended updates on this page.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE).min(MAX_PAGE)
    }

    /// The query these parameters make; the disk by name or id.
    ///
    /// # Errors
    /// `BadRequest` for an unknown state; `UnknownDisk`.
    pub fn query(&self, app: &App) -> Result<UpdateQuery, ServerError> {
        let which = WhichUpdates::parse(&self.state).ok_or_else(|| {
            ServerError::BadRequest(format!(
                "unknown state {}: one of live, ended, reserved, uploading, committed, \
                 cancelled, aborted",
                crate::text::printable(&self.state)
            ))
        })?;
        let some = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        let disk_id = match some(&self.disk) {
            Some(disk) => Some(app.data().meta().disk(&disk)?.id),
            None => None,
        };
        Ok(UpdateQuery {
            which,
            user: some(&self.user),
            disk_id,
            terminal: some(&self.terminal),
            before: self.before,
            limit: self.limit(),
        })
    }

    /// The query string of the page after `page`, if `page` was full.
    pub fn next(&self, page: &[UpdateView]) -> Option<String> {
        let ended = page
            .iter()
            .filter(|u| !matches!(u.state, "reserved" | "uploading"));
        let (count, last) = ended.fold((0, None), |(n, _), u| (n + 1, Some(u.seq)));
        if count < self.limit() {
            return None;
        }
        let next = Self {
            before: last,
            ..self.clone()
        };
        serde_urlencoded::to_string(&next).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(seq: i64) -> UpdateView {
        UpdateView {
            state: "committed",
            seq,
            ..UpdateView::default()
        }
    }

    #[test]
    fn the_next_page_starts_after_the_last_ended_update() {
        let history = History {
            state: "ended".into(),
            disk: "教室 A".into(),
            limit: Some(2),
            ..History::default()
        };
        let full = [ended(9), ended(7)];
        assert_eq!(
            history.next(&full).as_deref(),
            Some("state=ended&disk=%E6%95%99%E5%AE%A4+A&limit=2&before=7")
        );
        assert_eq!(history.next(&full[..1]), None, "the last page");
        let huge = History {
            limit: Some(1 << 40),
            ..History::default()
        };
        assert_eq!(huge.limit(), MAX_PAGE);
        assert_eq!(History::default().limit(), PAGE);
    }
}
