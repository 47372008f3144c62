//! HS256 client tokens with the claims corecast expects: `sub`, `exp`, optional `rooms`.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

use crate::error::BenchError;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    rooms: &'a [String],
}

/// Mints tokens for many uids with one key.
pub struct TokenMinter {
    key: EncodingKey,
    header: Header,
    rooms: Vec<String>,
    exp: u64,
}

impl TokenMinter {
    /// `exp` is an absolute unix time in seconds.
    pub fn new(secret: &str, rooms: Vec<String>, exp: u64) -> TokenMinter {
        TokenMinter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            rooms,
            exp,
        }
    }

    /// A signed token for `uid`.
    pub fn mint(&self, uid: &str) -> Result<String, BenchError> {
        Ok(encode(
            &self.header,
            &Claims {
                sub: uid,
                exp: self.exp,
                rooms: &self.rooms,
            },
            &self.key,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn token_has_expected_claims() {
        let token = TokenMinter::new("s", vec!["a".into()], 99)
            .mint("u7")
            .unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["sub"], "u7");
        assert_eq!(v["exp"], 99);
        assert_eq!(v["rooms"][0], "a");
    }
}
