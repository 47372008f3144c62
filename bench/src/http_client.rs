//! A minimal HTTP/1.1 keep-alive client for pushes: one connection, one request at a time,
//! `Content-Length` or chunked answers. Enough for corecast's push API and nchan's publisher,
//! with no HTTP stack to tune and nothing allocated per request beyond the request text.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::HTTP_RESPONSE_BYTES_MAX;
use crate::target::Endpoint;

/// Bytes read per call while waiting for an answer.
const READ_CHUNK_BYTES: usize = 8_192;

/// Why a push request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed answer")]
    Malformed,
    #[error("answer too large")]
    TooLarge,
    #[error("connection closed")]
    Closed,
    #[error("request timeout")]
    Timeout,
}

impl HttpError {
    /// Short stable label for counting errors by kind.
    pub fn label(&self) -> &'static str {
        match self {
            HttpError::Io(_) => "io",
            HttpError::Malformed => "malformed",
            HttpError::TooLarge => "too_large",
            HttpError::Closed => "closed",
            HttpError::Timeout => "timeout",
        }
    }
}

/// One keep-alive connection to an HTTP endpoint; reconnects on demand.
pub struct HttpConn {
    endpoint: Endpoint,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl HttpConn {
    /// A connection to `endpoint` whose requests fail after `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> HttpConn {
        HttpConn {
            endpoint,
            stream: None,
            buf: Vec::new(),
            timeout,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// GETs `path`; returns the status code and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.endpoint.host
        );
        self.exchange(request.as_bytes()).await
    }

    /// POSTs `body` to `path`; returns the status code and body. Retries once on a stale
    /// keep-alive connection.
    pub async fn post(
        &mut self,
        path: &str,
        auth: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.endpoint.host,
            body.len()
        );
        if let Some(key) = auth {
            head.push_str("Authorization: Bearer ");
            head.push_str(key);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let reused = self.stream.is_some();
        match self.exchange(&request).await {
            Err(HttpError::Io(_) | HttpError::Closed) if reused => self.exchange(&request).await,
            other => other,
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let deadline = self.timeout;
        let result = match tokio::time::timeout(deadline, self.exchange_inner(request)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.endpoint.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().expect("just connected");
        stream.write_all(request).await?;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if let Some((status, body, used, close)) = parse_answer(&self.buf)? {
                self.buf.drain(..used);
                if close {
                    self.stream = None;
                }
                return Ok((status, body));
            }
            if self.buf.len() > HTTP_RESPONSE_BYTES_MAX {
                return Err(HttpError::TooLarge);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One parsed answer: (status, body, bytes used, server closes the connection).
type Answer = (u16, Vec<u8>, usize, bool);

/// Parses one complete answer from `buf`.
fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf).map_err(|_| HttpError::Malformed)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.ok_or(HttpError::Malformed)?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let close = header("connection").is_some_and(|v| v.contains("close"));
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return parse_chunked(&buf[head_len..])
            .map(|r| r.map(|(body, used)| (status, body, head_len + used, close)));
    }
    let len: usize = match header("content-length") {
        Some(v) => v.trim().parse().map_err(|_| HttpError::Malformed)?,
        None => 0,
    };
    if len > HTTP_RESPONSE_BYTES_MAX {
        return Err(HttpError::TooLarge);
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    Ok(Some((
        status,
        buf[head_len..head_len + len].to_vec(),
        head_len + len,
        close,
    )))
}

fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text =
            std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| HttpError::Malformed)?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpError::Malformed)?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers are not used by the servers we talk to: expect the final CRLF.
            return Ok((buf.len() >= pos + 2).then(|| (body, pos + 2)));
        }
        if body.len() + size > HTTP_RESPONSE_BYTES_MAX {
            return Err(HttpError::TooLarge);
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_answers() {
        let a = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nokHTTP/1.1";
        let (status, body, used, close) = parse_answer(a).unwrap().unwrap();
        assert_eq!(
            (status, body.as_slice(), used, close),
            (202, &b"ok"[..], a.len() - 8, false)
        );
        let c = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (status, body, used, close) = parse_answer(c).unwrap().unwrap();
        assert_eq!(
            (status, body.as_slice(), used, close),
            (201, &b"abc"[..], c.len(), true)
        );
        assert!(parse_answer(&c[..c.len() - 1]).unwrap().is_none());
    }
}
