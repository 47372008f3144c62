//! Where the load goes: parsed `--ws` / `--http` URLs, the kind of server (corecast or nchan),
//! and the request path and channel each connection and push uses.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A corecast node: `GET /ws?token=JWT`, `POST /v1/push/...` with an API key.
    Corecast,
    /// nginx + nchan: subscribe `GET {path}/{channel}` (websocket), publish `POST {path}/{channel}`.
    Nchan,
}

/// One server endpoint: resolved address plus the Host header and base path from the URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Endpoint {
    /// Parses `ws://host:port/path` or `http://host:port/path` (no TLS) and resolves the host.
    pub fn parse(url: &str) -> Result<Endpoint, BenchError> {
        let bad = |reason: &str| BenchError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| bad("scheme must be ws:// or http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| bad("no IPv4 address"))?;
        Ok(Endpoint {
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// Whether connections to this endpoint may use rotated 127.x source addresses.
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// Subscribe path of connection `uid` on `endpoint` (token appended for corecast).
pub fn subscribe_path(kind: TargetKind, endpoint: &Endpoint, channel: &str, token: &str) -> String {
    match kind {
        TargetKind::Corecast => {
            let base = if endpoint.path.is_empty() {
                "/ws"
            } else {
                endpoint.path.as_str()
            };
            format!("{base}?token={token}")
        }
        TargetKind::Nchan => {
            let base = if endpoint.path.is_empty() {
                "/sub"
            } else {
                endpoint.path.as_str()
            };
            format!("{base}/{channel}")
        }
    }
}

/// Push path for a broadcast (`None` channel) or a unicast to `uid`.
pub fn push_path(kind: TargetKind, endpoint: &Endpoint, uid: Option<&str>) -> String {
    match kind {
        TargetKind::Corecast => {
            let base = endpoint.path.as_str();
            match uid {
                Some(uid) => format!("{base}/v1/push/user/{uid}"),
                None => format!("{base}/v1/push/broadcast"),
            }
        }
        TargetKind::Nchan => {
            let base = if endpoint.path.is_empty() {
                "/pub"
            } else {
                endpoint.path.as_str()
            };
            format!("{base}/{}", uid.unwrap_or(BROADCAST_CHANNEL))
        }
    }
}

/// The nchan channel every connection of a broadcast run subscribes to.
pub const BROADCAST_CHANNEL: &str = "all";

/// Push body carrying the sequence number and the intended send time in unix microseconds.
pub fn push_body(kind: TargetKind, seq: u64, t_us: u64) -> String {
    match kind {
        TargetKind::Corecast => format!("{{\"data\":{{\"seq\":{seq},\"t_us\":{t_us}}}}}"),
        TargetKind::Nchan => format!("{{\"seq\":{seq},\"t_us\":{t_us}}}"),
    }
}

/// User id of the connection with global index `index`.
pub fn uid(index: u64) -> String {
    format!("u{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_builds_paths() {
        let ws = Endpoint::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(ws.addr.port(), 9000);
        assert_eq!(
            subscribe_path(TargetKind::Corecast, &ws, "u1", "T"),
            "/ws?token=T"
        );
        assert_eq!(subscribe_path(TargetKind::Nchan, &ws, "u1", "T"), "/sub/u1");
        let http = Endpoint::parse("http://127.0.0.1:9001/").unwrap();
        assert_eq!(
            push_path(TargetKind::Corecast, &http, Some("u3")),
            "/v1/push/user/u3"
        );
        assert_eq!(
            push_path(TargetKind::Corecast, &http, None),
            "/v1/push/broadcast"
        );
        assert_eq!(push_path(TargetKind::Nchan, &http, None), "/pub/all");
        assert!(Endpoint::parse("wss://x:1").is_err());
    }

    #[test]
    fn bodies_carry_seq_and_time() {
        assert_eq!(
            push_body(TargetKind::Corecast, 3, 7),
            r#"{"data":{"seq":3,"t_us":7}}"#
        );
        assert_eq!(push_body(TargetKind::Nchan, 3, 7), r#"{"seq":3,"t_us":7}"#);
    }
}
