//! The static file the WebSocket port serves besides the upgrade:
//! `GET /corecast.js`, the browser client (an ES module), with
//! `Access-Control-Allow-Origin: *` so that any page may import it, and an
//! `ETag` so that a page load revalidates with a 304 instead of a download.
//! Pure: request bytes in, response bytes out.

/// The browser client, compiled into the binary.
pub const CORECAST_JS: &str = include_str!("../assets/corecast.js");

/// Where it is served.
pub const CORECAST_JS_PATH: &str = "/corecast.js";

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

/// A complete request for the module.
#[derive(Debug, PartialEq, Eq)]
pub struct AssetRequest {
    /// `HEAD`: the headers only.
    pub head_only: bool,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
}

/// `Some` when `buf` holds a complete `GET` or `HEAD` of
/// [`CORECAST_JS_PATH`] (any query string); `None` for anything else,
/// including a request that is not complete yet.
pub fn asset_request(buf: &[u8]) -> Option<AssetRequest> {
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
    if route != CORECAST_JS_PATH {
        return None;
    }
    let if_none_match = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("if-none-match"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_owned);
    Some(AssetRequest {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_of_the_module_is_recognised_and_answered_with_cors_and_an_etag() {
        let request = asset_request(b"GET /corecast.js?v=1 HTTP/1.1\r\nHost: n\r\n\r\n").unwrap();
        assert_eq!(
            request,
            AssetRequest {
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
        let text =
            String::from_utf8(response(&asset_request(request.as_bytes()).unwrap())).unwrap();
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let head = asset_request(b"HEAD /corecast.js HTTP/1.1\r\n\r\n").unwrap();
        let text = String::from_utf8(response(&head)).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", CORECAST_JS.len())));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn anything_else_is_not_an_asset() {
        assert_eq!(asset_request(b"GET /ws?token=x HTTP/1.1\r\n\r\n"), None);
        assert_eq!(asset_request(b"POST /corecast.js HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            asset_request(b"GET /corecast.js HTTP/1.1\r\nHost"),
            None,
            "incomplete"
        );
        assert_eq!(asset_request(b"\x00\x01garbage"), None);
    }
}
