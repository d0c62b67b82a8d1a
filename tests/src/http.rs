//! A small HTTP/1.1 client for the console and API tests, and for driving a WebDriver:
//! one request per connection (`Connection: close`), fixed-length or chunked replies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request to `addr` (`host:port`) and reads the whole reply.
///
/// # Panics
/// On a connection or protocol failure.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = send(addr, method, path, headers, body);
    let mut reader = BufReader::new(&mut stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// A JSON request; the reply as it came.
pub fn json(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, method, path, &all, Some(body.to_string().as_bytes()))
}

/// An open stream of Server-Sent Events.
#[derive(Debug)]
pub struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    /// Opens `path` as an event stream.
    ///
    /// # Panics
    /// When the reply is not 200.
    pub fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Self {
        Self::try_open(addr, path, headers).unwrap_or_else(|status| {
            panic!("event stream refused: {status}");
        })
    }

    /// Opens `path` as an event stream.
    ///
    /// # Errors
    /// The reply's status, when not 200.
    pub fn try_open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        let stream = send(addr, "GET", path, headers, None);
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reader = BufReader::new(stream);
        let (status, _) = read_head(&mut reader);
        if status == 200 {
            Ok(Self { reader })
        } else {
            Err(status)
        }
    }

    /// Whether the server ends the stream within `limit` (what it sends till then is
    /// skipped).
    pub fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("timeout");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// The data of the next event named `name` (chunk framing lines are skipped: they
    /// never start with `data:`).
    ///
    /// # Panics
    /// When the stream ends or stays silent 30 s.
    pub fn next(&mut self, name: &str) -> String {
        let mut current = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("event line");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end();
            if let Some(event) = line.strip_prefix("event:") {
                current = event.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:")
                && current == name
            {
                return data.trim_start().to_owned();
            }
        }
    }
}

fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // The address as Host, unless the caller names another.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    if let Some(body) = body {
        stream.write_all(body).expect("send body");
    }
    stream
}

fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (status, headers)
}
