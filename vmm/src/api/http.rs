//! HTTP/1.1 over a UNIX socket, as much as the control API needs: one request per connection
//! read with `httparse` (headers at most [`MAX_HEAD`] bytes, a body of at most [`MAX_BODY`]
//! bytes, both within [`READ_TIMEOUT`]), one response written back, then the connection closes.
//! Every malformed, oversized or slow request gets a 4xx answer, never a hang or a panic.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body.
pub const MAX_BODY: usize = 64 << 10;
/// How long a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most headers a request may have.
const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, e.g. `/api/v1/vmm.ping` (a query string is cut off).
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// Why a request could not be read; each maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not HTTP, or HTTP that cannot be parsed.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Head or body over its limit.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// The client stopped sending before the request was complete.
    #[error("the client did not send a whole request within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
    /// The client closed the connection before sending anything (nothing to answer).
    #[error("the client closed the connection")]
    Closed,
    /// The socket failed.
    #[error("reading the request")]
    Io(#[source] io::Error),
}

impl ReadError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ReadError::Malformed(_) => 400,
            ReadError::TooLarge(_) => 413,
            ReadError::Timeout => 408,
            ReadError::Closed | ReadError::Io(_) => 400,
        }
    }
}

/// Parses a request head in `buf`: `Ok(Some((request without body, head length,
/// content length)))` when complete, `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req
        .parse(buf)
        .map_err(|e| ReadError::Malformed(e.to_string()))?;
    let httparse::Status::Complete(head_len) = status else {
        return Ok(None);
    };
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_string();
    let mut content_length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ReadError::Malformed("Content-Length is not a number".into()))?;
            content_length = v;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Malformed(
                "chunked bodies are not supported; send Content-Length".into(),
            ));
        }
    }
    if content_length > MAX_BODY {
        return Err(ReadError::TooLarge(format!(
            "a body of {content_length} bytes; the limit is {MAX_BODY}"
        )));
    }
    Ok(Some((
        Request {
            method,
            path,
            body: Vec::new(),
        },
        head_len,
        content_length,
    )))
}

/// Reads one request from `stream` (which must have a read timeout set).
pub fn read_request(stream: &mut impl Read) -> Result<Request, ReadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let (mut req, head_len, len) = loop {
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge(format!(
                "headers over {MAX_HEAD} bytes"
            )));
        }
        if Instant::now() > deadline {
            return Err(ReadError::Timeout);
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Malformed(
                    "the request ends in its headers".into(),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    };
    let mut body = buf.split_off(head_len);
    while body.len() < len {
        if Instant::now() > deadline {
            return Err(ReadError::Timeout);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ReadError::Malformed(
                    "the body is shorter than Content-Length".into(),
                ))
            }
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

/// The reason phrase of a status code.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a response with a JSON `body` (none for 204).
pub fn write_response(stream: &mut impl Write, status: u16, body: &[u8]) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    if status != 204 {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if status != 204 {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_with_a_body_is_read_whole() {
        let raw = b"PUT /api/v1/vm.add-device?x=1 HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Length: 11\r\n\r\n{\"id\":\"a\"}Xextra";
        let req = read_request(&mut &raw[..]).unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/api/v1/vm.add-device");
        assert_eq!(req.body, b"{\"id\":\"a\"}X");
    }

    #[test]
    fn bad_requests_get_their_status() {
        let cases: [(&[u8], u16); 5] = [
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
        ];
        for (raw, status) in cases {
            let err = read_request(&mut &raw[..]).unwrap_err();
            assert_eq!(
                err.status(),
                status,
                "{err} for {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 10_000];
        assert_eq!(read_request(&mut &huge[..]).unwrap_err().status(), 413);
        assert!(matches!(
            read_request(&mut &b""[..]),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn responses_carry_length_and_type() {
        let mut out = Vec::new();
        write_response(&mut out, 200, b"{}").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n") && text.ends_with("\r\n\r\n{}"));
        let mut out = Vec::new();
        write_response(&mut out, 204, b"ignored").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }
}
