//! Reading the client's HTTP request head: bounded in size (16 KiB) and in time (a total
//! deadline from accept, so a client sending one byte a second is cut like a silent one).
//! Bytes the client sent after the head (an eager client's ClientHello) are kept: they are
//! the start of the tunnel.

use std::io;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::net::splice::PooledBuf;

/// Request heads larger than this get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The head as received (replayed to the HTTP forwarder for absolute-form requests).
    pub raw: Vec<u8>,
    /// Bytes after the head.
    pub rest: Vec<u8>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("request head not complete within the header timeout")]
    Timeout,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("client closed after {got} bytes, before a whole request head")]
    ClosedEarly { got: usize },
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

/// Reads one request head from `stream` until `deadline`. The reads go into a pooled
/// buffer (no 16 KiB zeroed per connection); a head that arrives in one read is parsed
/// there, and only one that spans reads is gathered, at most `MAX_HEAD_BYTES` + 1 bytes
/// (one byte more than allowed, so an oversized head is seen as such).
pub async fn read_head(stream: &TcpStream, deadline: Instant) -> Result<RequestHead, HeadError> {
    let mut pooled = PooledBuf::take();
    let mut gathered: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(r) => r?,
        }
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(gathered.len());
        let buf = pooled.as_mut();
        let Some(spare) = buf.get_mut(..room.min(buf.len())).filter(|s| !s.is_empty()) else {
            return Err(HeadError::TooLarge);
        };
        let chunk = match crate::net::splice::read_drained(stream, spare) {
            Ok(0) => {
                return Err(HeadError::ClosedEarly {
                    got: gathered.len(),
                });
            }
            Ok(n) => spare.get(..n).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        if gathered.is_empty() {
            if let Some(head) = parse_head(chunk)? {
                return Ok(head);
            }
            gathered.extend_from_slice(chunk);
        } else {
            gathered.extend_from_slice(chunk);
            if let Some(head) = parse_head(&gathered)? {
                return Ok(head);
            }
        }
        if gathered.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Parses a complete head from `buf`, or `None` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(http_error(e))),
    };
    if n > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    Ok(Some(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        raw: buf.get(..n).unwrap_or_default().to_vec(),
        rest: buf.get(n..).unwrap_or_default().to_vec(),
    }))
}

fn http_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// A complete HTTP/1.1 response for a refusal: short text body naming the reason,
/// `Connection: close`, and `extra_headers` lines (`Name: value`, e.g. `Allow` with a 405).
pub fn refusal_response(
    status: u16,
    reason_phrase: &str,
    body: &str,
    extra_headers: &[&str],
) -> Vec<u8> {
    let body = format!("tlspeek: {body}\n");
    let extra: String = extra_headers.iter().map(|h| format!("{h}\r\n")).collect();
    format!(
        "HTTP/1.1 {status} {reason_phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nProxy-Agent: tlspeek\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub const ESTABLISHED: &[u8] =
    b"HTTP/1.1 200 Connection established\r\nProxy-Agent: tlspeek\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_and_keeps_the_rest() {
        let h = parse_head(
            b"CONNECT login.microsoftonline.com:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.method, "CONNECT");
        assert_eq!(h.target, "login.microsoftonline.com:443");
        assert_eq!(h.version, 1);
        assert_eq!(h.header("host"), Some(&b"x"[..]));
        assert_eq!(h.rest, b"\x16\x03\x01");
    }

    #[test]
    fn partial_malformed_and_oversized() {
        assert!(
            parse_head(b"CONNECT a:443 HTTP/1.1\r\nHost:")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_head(b"CONNECT a b:443 HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00"),
            Err(HeadError::Malformed(_))
        ));
        let mut big = b"CONNECT a:443 HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert!(matches!(parse_head(&big), Err(HeadError::TooLarge)));
        let mut many = b"CONNECT a:443 HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert!(matches!(parse_head(&many), Err(HeadError::TooLarge)));
    }

    #[test]
    fn refusal_has_length_and_reason() {
        let r = String::from_utf8(refusal_response(
            403,
            "Forbidden",
            "port 22 is not allowed",
            &[],
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(r.contains("Content-Length: 32\r\n"), "{r}");
        assert!(r.ends_with("tlspeek: port 22 is not allowed\n"));
    }
}
