//! The push-body parser on arbitrary bytes for each media type and batch
//! flag: never panics; a JSON payload is itself valid JSON; a text payload
//! is UTF-8; a batch always carries a uid list of 1..=BATCH_USERS_MAX
//! distinct valid names.
#![no_main]

use bytes::Bytes;
use corecast::auth::valid_name;
use corecast::http::body::parse_content;
use corecast::limits::BATCH_USERS_MAX;
use corecast::push::ContentKind;
use libfuzzer_sys::fuzz_target;

const MEDIA: [&str; 5] = [
    "application/json",
    "text/plain",
    "application/octet-stream",
    "image/png",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let media = MEDIA[usize::from(selector) % MEDIA.len()];
    let batch = selector & 0x80 != 0;
    if let Ok(content) = parse_content(media, Bytes::copy_from_slice(body), batch) {
        match content.kind {
            ContentKind::Json => {
                serde_json_check(&content.payload);
            }
            ContentKind::Text => assert!(std::str::from_utf8(&content.payload).is_ok()),
            ContentKind::Binary => assert_eq!(&content.payload[..], body),
        }
        if batch {
            let uids = content.uids.expect("a batch carries uids");
            assert!((1..=BATCH_USERS_MAX).contains(&uids.len()));
            assert!(uids.iter().all(|u| valid_name(u)));
            let distinct: std::collections::HashSet<&String> = uids.iter().collect();
            assert_eq!(distinct.len(), uids.len());
        }
    }
});

fn serde_json_check(payload: &[u8]) {
    // The payload is a slice of a body that parsed as JSON: it must parse
    // alone too (it is spliced verbatim into the frame sent to clients).
    // RawValue checks the syntax only: numbers beyond f64 are valid JSON.
    serde_json::from_slice::<&serde_json::value::RawValue>(payload)
        .expect("a JSON payload is JSON on its own");
}
