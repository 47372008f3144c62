//! The client frame decoder and message parser on arbitrary bytes, as the
//! connection task drives them: decode frames one after another (unmasking
//! in place), bound every data payload by the cap, and parse text payloads
//! as client messages. Never panics; a frame never claims more bytes than
//! the buffer holds.
#![no_main]

use corecast::ws::frame::{CONTROL_PAYLOAD_BYTES_MAX, decode_client_frame, parse_close};
use corecast::ws::message;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut at = 0;
    while at < buf.len() {
        match decode_client_frame(&mut buf[at..], MAX) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && at + used <= data.len());
                assert!(frame.payload.len() <= MAX.max(CONTROL_PAYLOAD_BYTES_MAX));
                let _ = message::parse(frame.payload);
                if let Ok(Some(code)) = parse_close(frame.payload) {
                    assert!(corecast::ws::frame::valid_close_code(code));
                }
                at += used;
            }
            Ok(None) => break,
            Err(error) => {
                let _ = error.close_code();
                break;
            }
        }
    }
    // The message parser alone, on the raw bytes.
    let _ = message::parse(data);
});
