//! Push bodies, with no sockets: a media type and the body bytes in, a
//! [`Content`] (frame kind, payload, batch uids) or a [`BodyError`] out.
//! Pure, so that it can be fuzzed.
//!
//! A batch's `uids` are checked while serde reads them ([`UidList`]): each
//! name as it arrives, duplicates dropped (first one kept, order kept), and
//! the parse stops at the first uid past [`BATCH_USERS_MAX`], so a body never
//! costs more than that many names.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::auth::valid_name;
use crate::limits::{BATCH_USERS_MAX, NAME_BYTES_MAX};
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
    /// Present (any JSON value, `null` included) or absent.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    uids: Option<UidList>,
}

/// `Some` for any value the field holds, `null` included (serde's `Option`
/// would read `null` as an absent field).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A batch's uids: valid names, distinct, 1..=[`BATCH_USERS_MAX`], checked
/// element by element while the JSON is read.
struct UidList(Vec<String>);

impl<'de> Deserialize<'de> for UidList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(UidVisitor)
    }
}

struct UidVisitor;

impl<'de> Visitor<'de> for UidVisitor {
    type Value = UidList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of 1..={BATCH_USERS_MAX} user ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UidList, A::Error> {
        let mut uids: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut listed = 0usize;
        while let Some(uid) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            listed += 1;
            if listed > BATCH_USERS_MAX {
                return Err(de::Error::custom(format_args!(
                    "uids must list 1..={BATCH_USERS_MAX} users"
                )));
            }
            if !valid_name(&uid) {
                return Err(de::Error::custom(format_args!(
                    "uid {:?} must be 1..={NAME_BYTES_MAX} bytes with no control character",
                    shown(&uid)
                )));
            }
            if !seen.contains(uid.as_ref()) {
                let uid = uid.into_owned();
                seen.insert(uid.clone());
                uids.push(uid);
            }
        }
        if uids.is_empty() {
            return Err(de::Error::custom(format_args!(
                "uids must list 1..={BATCH_USERS_MAX} users"
            )));
        }
        Ok(UidList(uids))
    }
}

/// At most the first 64 characters of a refused name, for the error text.
fn shown(name: &str) -> &str {
    name.char_indices()
        .nth(64)
        .map_or(name, |(end, _)| &name[..end])
}

/// The body of a push, parsed by content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub kind: ContentKind,
    /// The JSON text of `data` (a slice of the body), the text, or the bytes.
    pub payload: Bytes,
    /// The `uids` list of a batch body: valid, distinct names in body
    /// order, 1..=[`BATCH_USERS_MAX`] of them.
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
            let parsed: DataBody = serde_json::from_slice(&body).map_err(|e| {
                BodyError::BadRequest(if e.is_data() {
                    format!("body is not a valid push: {e}")
                } else {
                    format!("body is not valid JSON: {e}")
                })
            })?;
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
                uids: parsed.uids.map(|u| u.0),
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
    fn null_data_is_a_value_and_a_missing_field_is_not() {
        let null = parse_content(
            "application/json",
            Bytes::from_static(br#"{"data":null}"#),
            false,
        );
        assert_eq!(&null.unwrap().payload[..], b"null");
        let missing = parse_content("application/json", Bytes::from_static(br#"{"x":1}"#), false);
        assert!(matches!(missing, Err(BodyError::BadRequest(_))));
    }

    fn batch(uids: &str) -> Result<Content, BodyError> {
        let body = format!(r#"{{"uids":{uids},"data":1}}"#);
        parse_content("application/json", Bytes::from(body), true)
    }

    #[test]
    fn batch_uids_are_deduplicated_in_order() {
        let content = batch(r#"["b","a","b","c","a","\u0062"]"#).unwrap();
        assert_eq!(content.uids.unwrap(), vec!["b", "a", "c"]);
    }

    #[test]
    fn batch_cap_counts_listed_uids_while_parsing() {
        let at_cap: Vec<String> = (0..BATCH_USERS_MAX).map(|i| format!("u{i}")).collect();
        let content = batch(&serde_json::to_string(&at_cap).unwrap()).unwrap();
        assert_eq!(content.uids.unwrap().len(), BATCH_USERS_MAX);
        // One uid listed cap + 1 times is refused: the cap is on what the
        // body lists, so the parse stops there whatever follows.
        let repeated = format!("[{}]", vec!["\"x\""; BATCH_USERS_MAX + 1].join(","));
        let Err(BodyError::BadRequest(message)) = batch(&repeated) else {
            panic!("over the cap")
        };
        assert!(message.contains("uids must list"), "{message}");
        // The refusal comes at element cap + 1 even when the rest of the
        // body is not JSON at all.
        let mut cut = at_cap
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(",");
        cut.push_str(r#","one-more", this is not json"#);
        let Err(BodyError::BadRequest(message)) = batch(&format!("[{cut}")) else {
            panic!("over the cap")
        };
        assert!(message.contains("uids must list"), "{message}");
    }

    #[test]
    fn batch_uids_must_be_names() {
        for bad in [
            r#"[]"#,
            r#"[""]"#,
            r#"["a\nb"]"#,
            r#"["ok","\u0000"]"#,
            r#"[1]"#,
        ] {
            assert!(matches!(batch(bad), Err(BodyError::BadRequest(_))), "{bad}");
        }
        let long = format!(r#"["{}"]"#, "x".repeat(NAME_BYTES_MAX + 1));
        let Err(BodyError::BadRequest(message)) = batch(&long) else {
            panic!("too long")
        };
        assert!(message.len() < 300, "{message}");
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
