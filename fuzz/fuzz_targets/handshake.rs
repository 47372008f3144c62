//! The WebSocket upgrade parser on arbitrary bytes: never panics; a parsed
//! request's token comes from the bytes; every refusal renders a response
//! whose status line matches its status.
#![no_main]

use corecast::ws::handshake::parse_upgrade;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Cap as the node does (default 8192), and a small one to hit the edge.
    for max in [8192usize, 64] {
        match parse_upgrade(data, max) {
            Ok(Some(request)) => {
                assert_eq!(request.accept.len(), 28, "base64 of a SHA-1");
            }
            Ok(None) => assert!(data.len() < max),
            Err(error) => {
                let (status, _) = error.status();
                let response = error.response();
                let head = format!("HTTP/1.1 {status} ");
                assert!(response.starts_with(head.as_bytes()));
            }
        }
    }
});
