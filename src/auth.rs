//! Who may connect and who may push: HS256 client tokens (verified at the
//! WebSocket upgrade, minted by `corecast token`) and API keys for `/v1/*`.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::limits::NAME_BYTES_MAX;

/// The claims of a client token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Rooms joined at connect, and the only rooms `join` may ask for unless
    /// the node allows free join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// A label for the device or tab, shown in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Why a token was refused; the `code` is sent to the client in the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::BadClaims(_) => "token_bad_claims",
        }
    }
}

/// Verifies and mints client tokens with one HS256 secret.
pub struct TokenKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks signature, expiry and the claims' shape; `max_rooms` bounds the
    /// `rooms` claim.
    pub fn verify(&self, token: &str, max_rooms: usize) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    TokenError::BadClaims(format!("missing claim {c}"))
                }
                ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaims(format!("bad claim {c}")),
                ErrorKind::Json(_) => {
                    TokenError::BadClaims("claims are not the expected JSON".into())
                }
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        if !valid_name(&claims.sub) {
            return Err(TokenError::BadClaims(format!(
                "sub must be 1..={NAME_BYTES_MAX} bytes"
            )));
        }
        if let Some(rooms) = &claims.rooms {
            if rooms.len() > max_rooms {
                return Err(TokenError::BadClaims(format!(
                    "{} rooms, more than max_rooms_per_user {max_rooms}",
                    rooms.len()
                )));
            }
            if !rooms.iter().all(|r| valid_name(r)) {
                return Err(TokenError::BadClaims(format!(
                    "room names must be 1..={NAME_BYTES_MAX} bytes"
                )));
            }
        }
        if claims
            .device
            .as_ref()
            .is_some_and(|d| d.len() > NAME_BYTES_MAX)
        {
            return Err(TokenError::BadClaims("device label too long".into()));
        }
        Ok(claims)
    }

    /// Mints a token for `uid` valid for `ttl`.
    pub fn mint(
        &self,
        uid: &str,
        rooms: Option<Vec<String>>,
        device: Option<String>,
        ttl: Duration,
    ) -> String {
        let claims = Claims {
            sub: uid.to_string(),
            exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
            rooms,
            device,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// A user, room or device name: non-empty and bounded.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_BYTES_MAX
}

/// The API keys accepted on `/v1/*`.
#[derive(Clone)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys(<{} redacted>)", self.0.len())
    }
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self(keys.iter().map(|k| k.as_bytes().to_vec()).collect())
    }

    /// Checks an `Authorization` header value (`Bearer <key>`) in time that
    /// does not depend on where a guess differs.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(key) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        self.0
            .iter()
            .fold(false, |ok, known| ok | constant_time_eq(known, key))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random secret or key for a dev node started with no configuration.
pub fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {text:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify() {
        let keys = TokenKeys::new(b"secret");
        let token = keys.mint(
            "alice",
            Some(vec!["a".into()]),
            None,
            Duration::from_secs(60),
        );
        let claims = keys.verify(&token, 8).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.rooms, Some(vec!["a".to_string()]));
    }

    #[test]
    fn refusals_are_named() {
        let keys = TokenKeys::new(b"secret");
        let other = TokenKeys::new(b"other");
        let token = other.mint("alice", None, None, Duration::from_secs(60));
        assert_eq!(keys.verify(&token, 8), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("not.a.jwt", 8), Err(TokenError::Malformed));
        let expired = Claims {
            sub: "a".into(),
            exp: jsonwebtoken::get_current_timestamp() - 10,
            rooms: None,
            device: None,
        };
        let token = jsonwebtoken::encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(keys.verify(&token, 8), Err(TokenError::Expired));
        let rooms = keys.mint("a", Some(vec!["r".into(); 3]), None, Duration::from_secs(9));
        assert!(matches!(
            keys.verify(&rooms, 2),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn api_keys() {
        let keys = ApiKeys::new(&["k1".into(), "k2".into()]);
        assert!(keys.allows(Some(b"Bearer k2")));
        assert!(!keys.allows(Some(b"Bearer k3")));
        assert!(!keys.allows(Some(b"k1")));
        assert!(!keys.allows(None));
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        assert!(parse_ttl("1y").is_err());
    }
}
