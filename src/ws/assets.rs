//! The files the WebSocket port serves besides the upgrade:
//! `GET /corecast.js`, the browser client (an ES module), with
//! `Access-Control-Allow-Origin: *` so that any page may import it, and an
//! `ETag` so that a page load revalidates with a 304 instead of a download;
//! and in dev mode (no configured `jwt_secret`) `GET /`, the demo page: a
//! page that imports the module, connects with a token minted for that
//! request and shows the `curl` line that pushes to it (never served when a
//! secret is configured, nor to a `Host` that is a DNS name other than
//! `localhost`: the request falls through to the upgrade's 404).
//! Pure: request bytes in, response bytes out.

use std::net::SocketAddr;

/// The browser client, compiled into the binary.
pub const CORECAST_JS: &str = include_str!("../assets/corecast.js");

/// Where it is served.
pub const CORECAST_JS_PATH: &str = "/corecast.js";

/// The demo page, compiled into the binary; `{{CONFIG}}` is replaced by
/// its [`DemoPage`] as JSON.
pub const DEMO_HTML: &str = include_str!("../assets/demo.html");

/// Where the demo page is served (dev mode only).
pub const DEMO_PATH: &str = "/";

/// The uid the demo page connects as (the banner's sample `curl` pushes to
/// it too).
pub const DEMO_UID: &str = "alice";

/// Headers looked at in an asset request.
const ASSET_HEADERS_MAX: usize = 64;

/// FNV-1a of the module, computed when the binary is built.
const CORECAST_JS_HASH: u64 = fnv1a(CORECAST_JS.as_bytes());

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The module's entity tag, quoted as HTTP writes it.
pub fn etag() -> String {
    format!("\"{CORECAST_JS_HASH:016x}\"")
}

/// Which file a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    /// `/corecast.js`.
    Module,
    /// `/` (dev mode only).
    DemoPage,
}

/// A complete request for a file.
#[derive(Debug, PartialEq, Eq)]
pub struct AssetRequest {
    pub asset: Asset,
    /// `HEAD`: the headers only.
    pub head_only: bool,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
}

/// `Some` when `buf` holds a complete `GET` or `HEAD` of
/// [`CORECAST_JS_PATH`], or of [`DEMO_PATH`] when `demo` (and the request
/// is no WebSocket upgrade), any query string; `None` for anything else,
/// including a request that is not complete yet.
pub fn asset_request(buf: &[u8], demo: bool) -> Option<AssetRequest> {
    let mut headers = [httparse::EMPTY_HEADER; ASSET_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(buf) else {
        return None;
    };
    let path = request.path?;
    let route = path.split_once('?').map_or(path, |(route, _)| route);
    let head_only = match request.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let asset = match route {
        CORECAST_JS_PATH => Asset::Module,
        DEMO_PATH
            if demo && header("upgrade").is_none() && header("host").is_none_or(local_host) =>
        {
            Asset::DemoPage
        }
        _ => return None,
    };
    let if_none_match = header("if-none-match").map(str::to_owned);
    Some(AssetRequest {
        asset,
        head_only,
        if_none_match,
    })
}

/// The whole response: 304 when the client's copy is current, else 200
/// with the module (no body for `HEAD`).
pub fn response(request: &AssetRequest) -> Vec<u8> {
    let etag = etag();
    let current = request
        .if_none_match
        .as_deref()
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let common = format!(
        "Access-Control-Allow-Origin: *\r\nETag: {etag}\r\nCache-Control: no-cache\r\nConnection: close\r\n"
    );
    if current {
        return format!("HTTP/1.1 304 Not Modified\r\n{common}\r\n").into_bytes();
    }
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/javascript; charset=utf-8\r\nContent-Length: {}\r\n{common}\r\n",
        CORECAST_JS.len()
    )
    .into_bytes();
    if !request.head_only {
        out.extend_from_slice(CORECAST_JS.as_bytes());
    }
    out
}

/// Whether a `Host` header names this machine without DNS: an IP address or
/// `localhost` (any port). The demo page carries a token and the API key;
/// a page of another site whose name was re-pointed at 127.0.0.1 (DNS
/// rebinding) sends its own name and gets the 404.
fn local_host(host: &str) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// What the demo page is told: whom it connects as, with which token, and
/// where its `curl` line pushes.
#[derive(Debug, serde::Serialize)]
pub struct DemoPage<'a> {
    pub uid: &'a str,
    /// A token for `uid`, minted for this request.
    pub token: &'a str,
    /// The push API's address; `None` for its host when it listens on every
    /// address (the page then names the host it was loaded from).
    pub http_host: Option<String>,
    pub http_port: u16,
    /// The API key, when it is the random one of this run; `None` when it
    /// is configured (never shown).
    pub api_key: Option<&'a str>,
}

impl<'a> DemoPage<'a> {
    pub fn new(uid: &'a str, token: &'a str, http: SocketAddr, api_key: Option<&'a str>) -> Self {
        let http_host = (!http.ip().is_unspecified()).then(|| match http {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
        Self {
            uid,
            token,
            http_host,
            http_port: http.port(),
            api_key,
        }
    }

    /// The page's HTML, this page's values in it.
    pub fn html(&self) -> String {
        // Inside a <script> element: no `<` may close it early.
        let config = serde_json::to_string(self)
            .unwrap_or_else(|_| "null".into())
            .replace('<', "\\u003c");
        DEMO_HTML.replace("{{CONFIG}}", &config)
    }

    /// The whole response for `request` (no body for `HEAD`); never cached,
    /// its token is fresh.
    pub fn response(&self, request: &AssetRequest) -> Vec<u8> {
        let html = self.html();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            html.len()
        )
        .into_bytes();
        if !request.head_only {
            out.extend_from_slice(html.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_of_the_module_is_recognised_and_answered_with_cors_and_an_etag() {
        let request =
            asset_request(b"GET /corecast.js?v=1 HTTP/1.1\r\nHost: n\r\n\r\n", false).unwrap();
        assert_eq!(
            request,
            AssetRequest {
                asset: Asset::Module,
                head_only: false,
                if_none_match: None
            }
        );
        let text = String::from_utf8(response(&request)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(text.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(text.contains(&format!("ETag: {}\r\n", etag())));
        assert!(text.ends_with(CORECAST_JS));
    }

    #[test]
    fn a_current_copy_gets_304_and_head_gets_no_body() {
        let tag = etag();
        let request = format!("GET /corecast.js HTTP/1.1\r\nIf-None-Match: W/\"x\", {tag}\r\n\r\n");
        let text = String::from_utf8(response(&asset_request(request.as_bytes(), false).unwrap()))
            .unwrap();
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let head = asset_request(b"HEAD /corecast.js HTTP/1.1\r\n\r\n", true).unwrap();
        let text = String::from_utf8(response(&head)).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", CORECAST_JS.len())));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn anything_else_is_not_an_asset() {
        assert_eq!(
            asset_request(b"GET /ws?token=x HTTP/1.1\r\n\r\n", true),
            None
        );
        assert_eq!(
            asset_request(b"POST /corecast.js HTTP/1.1\r\n\r\n", true),
            None
        );
        assert_eq!(
            asset_request(b"GET /corecast.js HTTP/1.1\r\nHost", true),
            None,
            "incomplete"
        );
        assert_eq!(asset_request(b"\x00\x01garbage", true), None);
    }

    #[test]
    fn the_demo_page_is_an_asset_in_dev_mode_only_and_never_for_an_upgrade() {
        let get = b"GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
        assert_eq!(
            asset_request(get, false),
            None,
            "a configured secret: 404 as before"
        );
        assert_eq!(
            asset_request(get, true).map(|r| r.asset),
            Some(Asset::DemoPage)
        );
        let upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(asset_request(upgrade, true), None);
    }

    #[test]
    fn the_demo_page_is_only_for_a_host_named_without_dns() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(asset_request(request.as_bytes(), true).is_some(), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "[evil]:1",
            "127.0.0.1.evil.example",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(asset_request(request.as_bytes(), true), None, "{host}");
        }
        // The module is for any page of any site.
        let module = b"GET /corecast.js HTTP/1.1\r\nHost: evil.example\r\n\r\n";
        assert!(asset_request(module, false).is_some());
    }

    #[test]
    fn the_demo_page_carries_its_token_and_curl_target_and_cannot_be_broken_out_of() {
        let http: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let page = DemoPage::new("alice", "t.o.k</script>", http, Some("key1"));
        let html = page.html();
        assert!(!html.contains("{{CONFIG}}"));
        assert!(html.contains(r#""token":"t.o.k\u003c/script>""#), "{html}");
        assert!(html.contains(r#""http_host":"127.0.0.1","http_port":8081,"api_key":"key1""#));
        assert!(html.contains(r#"from "/corecast.js""#));
        let any: SocketAddr = "0.0.0.0:9".parse().unwrap();
        assert!(
            DemoPage::new("a", "t", any, None)
                .html()
                .contains(r#""http_host":null"#)
        );
        let request = asset_request(b"HEAD / HTTP/1.1\r\n\r\n", true).unwrap();
        let text = String::from_utf8(page.response(&request)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(text.contains("Cache-Control: no-store\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "HEAD: no body");
    }
}
