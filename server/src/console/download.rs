//! A version's image downloaded from the console:
//! `GET /api/v1/disks/{disk}/versions/{version}/image?format=raw|qcow2|vhdx|vhd`.
//!
//! A raw image is streamed from the chunks as it is read, every chunk verified, and
//! answers HTTP ranges (`Range`, `If-Range` with the version's root as its `ETag`), so an
//! interrupted download resumes. The other formats are written first to the data dir's
//! `downloads/` (as `disk export` writes them), then opened, unlinked and streamed, so the
//! file's space returns when the download ends, however it ends. [`MAX_DOWNLOADS`] run at once, of which [`MAX_WRITTEN`] written ones,
//! so downloads cannot fill memory or the disk without a bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{ApiError, Caller, Shared};
use crate::app::blocking;
use crate::error::ServerError;
use crate::export::{Exporter, RawReader};
use crate::meta::VersionRow;

/// Downloads at once.
pub const MAX_DOWNLOADS: usize = 4;
/// Downloads at once that write their image first (qcow2, VHDX, VHD).
pub const MAX_WRITTEN: usize = 2;
/// Bytes a streamed piece holds; a few are in flight per download.
const PIECE: usize = 1 << 20;
/// Pieces queued ahead of a slow reader.
const AHEAD: usize = 4;
/// Where written images wait while they are downloaded.
const DIR: &str = "downloads";
/// A file in `downloads/` untouched this long was left by a server that stopped while it
/// wrote; a younger one may be another control server's on the same data dir.
const STALE: Duration = Duration::from_secs(15 * 60);

/// The slots downloads take.
#[derive(Debug)]
pub struct Downloads {
    any: Arc<Semaphore>,
    written: Arc<Semaphore>,
}

impl Downloads {
    /// The slots, after removing what downloads of an earlier run left in `root`.
    pub fn new(root: &Path) -> Self {
        remove_stale(&root.join(DIR), STALE);
        Self {
            any: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
            written: Arc::new(Semaphore::new(MAX_WRITTEN)),
        }
    }
}

fn busy() -> ServerError {
    ServerError::Busy(format!(
        "{MAX_DOWNLOADS} downloads at once, {MAX_WRITTEN} of them qcow2, VHDX or VHD"
    ))
}

/// An image format a download writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ImageFormat {
    Raw,
    Qcow2,
    Vhdx,
    Vhd,
}

impl ImageFormat {
    fn extension(self) -> &'static str {
        match self {
            Self::Raw => "img",
            Self::Qcow2 => "qcow2",
            Self::Vhdx => "vhdx",
            Self::Vhd => "vhd",
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ImageQuery {
    format: Option<ImageFormat>,
}

/// `GET /api/v1/disks/{disk}/versions/{version}/image?format=`, raw unless asked.
pub(super) async fn image(
    State(web): State<Shared>,
    _: Caller,
    UrlPath((disk, version)): UrlPath<(String, String)>,
    query: Result<Query<ImageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let format = query.format.unwrap_or(ImageFormat::Raw);
    let slot = web
        .downloads
        .any
        .clone()
        .try_acquire_owned()
        .map_err(|_| busy())?;
    let app = web.app.clone();
    let (disk_name, version) = blocking(move || {
        let version = app.version_of(&disk, &version)?;
        let disk = app.disk(&version.disk_id)?;
        Ok((disk.name, version))
    })
    .await?;
    let name = format!("{disk_name}-{}.{}", version.id, format.extension());
    let data = web.app.data().clone();
    let mut response = match format {
        ImageFormat::Raw => raw(data, version, &headers, slot).await?,
        _ => {
            let written = web
                .downloads
                .written
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?;
            written_image(data, version, format, [slot, written]).await?
        }
    };
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        ascii_name(&name),
        url_encode(&name)
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// A raw image, whole or the one range asked for.
async fn raw(
    data: Arc<crate::DataDir>,
    version: VersionRow,
    headers: &HeaderMap,
    slot: OwnedSemaphorePermit,
) -> Result<Response, ServerError> {
    let etag = format!("\"{}\"", version.root);
    let (reader_data, reader_version) = (data.clone(), version.clone());
    let size = blocking(move || Ok(RawReader::new(&reader_data, &reader_version)?.size())).await?;
    // A stale `If-Range` (another version, or a date) asks for the whole image.
    let fresh = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = match headers.get(header::RANGE).filter(|_| fresh) {
        None => None,
        Some(value) => match parse_range(value.to_str().unwrap_or_default(), size) {
            Some(range) => Some(range),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response());
            }
        },
    };
    let (start, end) = range.unwrap_or((0, size));
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut reader = match RawReader::new(&data, &version) {
            Ok(reader) => reader,
            Err(e) => return drop(sender.blocking_send(Err(std::io::Error::other(e)))),
        };
        let mut at = start;
        while at < end {
            let mut piece = vec![0; PIECE.min((end - at) as usize)];
            let read = reader.read(at, &mut piece);
            if let Err(e) = &read {
                tracing::error!(version = %version.id, cause = %e, "download stopped");
            }
            let sent = read
                .map(|()| Bytes::from(piece))
                .map_err(std::io::Error::other);
            if sender.blocking_send(sent).is_err() {
                return; // The client went away.
            }
            at = (at + PIECE as u64).min(end);
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {start}-{}/{size}", end.saturating_sub(1));
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// Removes the files in `dir` not modified for `age`: images a stopped server was writing.
fn remove_stale(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if idle.is_some_and(|idle| idle >= age) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A qcow2, VHDX or VHD image: written to `downloads/`, opened and unlinked, then
/// streamed from the open file.
async fn written_image(
    data: Arc<crate::DataDir>,
    version: VersionRow,
    format: ImageFormat,
    slots: [OwnedSemaphorePermit; 2],
) -> Result<Response, ServerError> {
    let dir = data.root().join(DIR);
    let path = dir.join(format!("{}.{}", uuid::Uuid::new_v4(), format.extension()));
    let file = Leftover(path.clone());
    let written = blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let exporter = Exporter::new(&data);
        match format {
            ImageFormat::Qcow2 => exporter.qcow2(&version, &path, None)?,
            ImageFormat::Vhdx => exporter.vhdx(&version, &path, None)?,
            ImageFormat::Vhd => exporter.vhd(&version, &path, None)?,
            ImageFormat::Raw => exporter.raw(&version, &path)?,
        };
        let written = std::fs::File::open(&path)?;
        drop(file);
        Ok(written)
    })
    .await?;
    let length = written.metadata()?.len();
    let stream = tokio_stream::StreamExt::map(
        file_stream(tokio::fs::File::from_std(written)),
        move |piece| {
            // The slots live as long as the stream.
            let _ = &slots;
            piece
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// A file's bytes as a stream of pieces.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut piece = vec![0; PIECE];
        match file.read(&mut piece).await {
            Ok(0) => None,
            Ok(n) => {
                piece.truncate(n);
                Some((Ok(Bytes::from(piece)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A written image's name, removed once it is open, or when writing it fails.
#[derive(Debug)]
struct Leftover(PathBuf);

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The one range of `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` within `size`,
/// as `(start, end)` with `end` exclusive; `None` when it is not one satisfiable range.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        (size.saturating_sub(suffix), size)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            size
        } else {
            last.parse::<u64>().ok()?.saturating_add(1).min(size)
        };
        (start, end)
    };
    (start < end).then_some((start, end))
}

/// A file name's ASCII stand-in for old clients.
fn ascii_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// RFC 5987 percent-encoding of a file name.
fn url_encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 1000)));
        assert_eq!(parse_range("bytes=1000-", 1000), None, "past the end");
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None, "one range only");
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=5-2", 1000), None);
        assert_eq!(ascii_name("教室A-v2.img"), "__A-v2.img");
        assert_eq!(url_encode("教 A"), "%E6%95%99%20A");
    }

    #[test]
    fn a_new_server_removes_only_what_a_stopped_one_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let downloads = dir.path().join(DIR);
        std::fs::create_dir(&downloads).expect("mkdir");
        let (stale, writing) = (downloads.join("a.qcow2"), downloads.join("b.vhdx"));
        for file in [&stale, &writing] {
            std::fs::write(file, b"image").expect("write");
        }
        let long_ago = std::time::SystemTime::now() - STALE - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age the file");
        let _slots = Downloads::new(dir.path());
        assert!(!stale.exists(), "a stopped server's image is removed");
        assert!(
            writing.exists(),
            "an image another control server is writing stays"
        );
    }
}
