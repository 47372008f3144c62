//! Push bodies, with no sockets: a media type and the body bytes in, a
//! [`Content`] (frame kind, payload, batch uids) or a [`BodyError`] out.
//! Pure, so that it can be fuzzed.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::push::ContentKind;

/// A body the push API refuses: 400 (`BadRequest`) or 415 (`Unsupported`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

#[derive(Deserialize)]
struct DataBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    uids: Option<Vec<String>>,
}

/// The body of a push, parsed by content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub kind: ContentKind,
    /// The JSON text of `data` (a slice of the body), the text, or the bytes.
    pub payload: Bytes,
    /// The `uids` list of a batch body.
    pub uids: Option<Vec<String>>,
}

/// Parses a push body of media type `media` (lower-case, no parameters).
/// `batch`: the body must be `application/json` with a `uids` list.
pub fn parse_content(media: &str, body: Bytes, batch: bool) -> Result<Content, BodyError> {
    let unsupported = || {
        BodyError::Unsupported(if batch {
            "batch pushes take application/json {\"uids\":[...],\"data\":...}"
        } else {
            "use application/json {\"data\":...}, text/plain or application/octet-stream"
        })
    };
    match media {
        "application/json" => {
            // serde would also read the struct from a JSON array
            // (`[data, uids]`): only an object is the documented shape.
            if body.trim_ascii_start().first() != Some(&b'{') {
                return Err(BodyError::BadRequest(
                    "body must be a JSON object {\"data\":...}".into(),
                ));
            }
            let parsed: DataBody = serde_json::from_slice(&body)
                .map_err(|e| BodyError::BadRequest(format!("body is not valid JSON: {e}")))?;
            let data = parsed
                .data
                .ok_or_else(|| BodyError::BadRequest("body has no \"data\" field".into()))?;
            if batch && parsed.uids.is_none() {
                return Err(BodyError::BadRequest(
                    "batch body has no \"uids\" list".into(),
                ));
            }
            let payload = body.slice_ref(data.get().as_bytes());
            Ok(Content {
                kind: ContentKind::Json,
                payload,
                uids: parsed.uids,
            })
        }
        _ if batch => Err(unsupported()),
        "text/plain" => {
            std::str::from_utf8(&body)
                .map_err(|_| BodyError::BadRequest("text/plain body is not UTF-8".into()))?;
            Ok(Content {
                kind: ContentKind::Text,
                payload: body,
                uids: None,
            })
        }
        "application/octet-stream" => Ok(Content {
            kind: ContentKind::Binary,
            payload: body,
            uids: None,
        }),
        _ => Err(unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_must_be_objects() {
        let body = Bytes::from_static(b"\t\t[555555555555555777e2525, 1]");
        assert!(matches!(
            parse_content("application/json", body, false),
            Err(BodyError::BadRequest(_))
        ));
        let big = Bytes::from_static(b"{\"data\": 1e999999}");
        let content = parse_content("application/json", big, false).unwrap();
        assert_eq!(&content.payload[..], b"1e999999");
    }

    #[test]
    fn kinds() {
        let json = parse_content(
            "application/json",
            Bytes::from_static(br#"{"data":[1]}"#),
            false,
        )
        .unwrap();
        assert_eq!(
            (json.kind, &json.payload[..]),
            (ContentKind::Json, &b"[1]"[..])
        );
        let text = parse_content("text/plain", Bytes::from_static(b"hi"), false).unwrap();
        assert_eq!(text.kind, ContentKind::Text);
        assert!(matches!(
            parse_content("text/plain", Bytes::from_static(b"hi"), true),
            Err(BodyError::Unsupported(_))
        ));
        assert!(matches!(
            parse_content(
                "application/json",
                Bytes::from_static(br#"{"data":1}"#),
                true
            ),
            Err(BodyError::BadRequest(_))
        ));
    }
}
