//! Who may connect and who may push: HS256 client tokens (verified at the
//! WebSocket upgrade, minted by `corecast token`) and API keys for `/v1/*`.
//!
//! Tokens: signature, `exp`, `nbf` (when present) and a cap on the remaining
//! lifetime (`exp - now`). API keys: compared as HMAC-SHA256 digests under a
//! per-process random key, in constant time, so neither a key's bytes nor its
//! length can be learned from answer times.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::limits::NAME_BYTES_MAX;

pub use crate::config::TOKEN_TTL_MAX_DEFAULT_MS;

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
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token lifetime exp - now is over token_ttl_max_ms ({0} ms)")]
    LifetimeTooLong(u64),
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
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::LifetimeTooLong(_) => "token_lifetime_too_long",
            TokenError::BadClaims(_) => "token_bad_claims",
        }
    }
}

/// Verifies and mints client tokens with one HS256 secret.
pub struct TokenKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    /// Longest `exp - now` accepted, in seconds (whole seconds, like `exp`).
    ttl_max_secs: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    /// Keys for `secret`, capping token lifetimes at
    /// [`TOKEN_TTL_MAX_DEFAULT_MS`] (see [`TokenKeys::with_ttl_max`]).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            ttl_max_secs: TOKEN_TTL_MAX_DEFAULT_MS / 1000,
        }
    }

    /// Keys as `[auth]` configures them: its secret and its
    /// `token_ttl_max_ms`.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Self {
        Self::new(auth.jwt_secret.as_bytes())
            .with_ttl_max(Duration::from_millis(auth.token_ttl_max_ms))
    }

    /// Sets the cap on `exp - now` (`[auth] token_ttl_max_ms`).
    pub fn with_ttl_max(mut self, ttl_max: Duration) -> Self {
        self.ttl_max_secs = ttl_max.as_secs();
        self
    }

    /// Checks signature, expiry and the claims' shape; `max_rooms` bounds the
    /// `rooms` claim.
    pub fn verify(&self, token: &str, max_rooms: usize) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
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
        let now = jsonwebtoken::get_current_timestamp();
        if claims.exp.saturating_sub(now) > self.ttl_max_secs {
            return Err(TokenError::LifetimeTooLong(
                self.ttl_max_secs.saturating_mul(1000),
            ));
        }
        if !valid_name(&claims.sub) {
            return Err(TokenError::BadClaims(format!(
                "sub must be 1..={NAME_BYTES_MAX} bytes with no control character"
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
                    "room names must be 1..={NAME_BYTES_MAX} bytes with no control character"
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

/// A user or room name: 1..=[`NAME_BYTES_MAX`] bytes and no control
/// character (C0, DEL, C1), the rule the mesh validator applies too.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_BYTES_MAX && !name.chars().any(char::is_control)
}

/// A path segment that is not valid percent-encoded UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    #[error("the decoded bytes are not UTF-8")]
    NotUtf8,
}

/// Decodes one percent-encoded name (a path segment, a query value), refusing (rather than replacing) a bad escape
/// or bytes that are not UTF-8, so that two distinct raw segments never
/// decode to the same name.
pub fn decode_segment(raw: &str) -> Result<String, SegmentError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err(SegmentError::BadEscape);
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SegmentError::NotUtf8)
}

type HmacSha256 = Hmac<Sha256>;

/// The fixed key of the hash that names an API key's idempotency scope.
const IDEMPOTENCY_SCOPE_LABEL: &[u8; 32] = b"corecast idempotency scope v1...";

/// The API keys accepted on `/v1/*`, kept as HMAC-SHA256 digests under a
/// per-process random key: every comparison is between two 32-byte digests,
/// whatever the lengths of the key and of the guess.
#[derive(Clone)]
pub struct ApiKeys {
    mac_key: [u8; 32],
    digests: Vec<[u8; 32]>,
    /// Per key: the scope of its idempotency keys, the same on every node
    /// with the same key (a keyed hash with a fixed label, so the key itself
    /// is neither kept nor sent).
    scopes: Vec<u64>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys(<{} redacted>)", self.digests.len())
    }
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        let mac_key: [u8; 32] = rand::random();
        let digests = keys
            .iter()
            .map(|k| digest(&mac_key, k.as_bytes()))
            .collect();
        let scopes = keys
            .iter()
            .map(|k| {
                let d = digest(IDEMPOTENCY_SCOPE_LABEL, k.as_bytes());
                u64::from_le_bytes(d[..8].try_into().expect("8 of 32 bytes"))
            })
            .collect();
        Self {
            mac_key,
            digests,
            scopes,
        }
    }

    /// The idempotency scope of key `index` (see [`Self::identify`]).
    pub fn scope(&self, index: usize) -> u64 {
        self.scopes.get(index).copied().unwrap_or(0)
    }

    /// Checks an `Authorization` header value (`Bearer <key>`) in time that
    /// depends neither on where a guess differs nor on its length.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        self.identify(authorization).is_some()
    }

    /// Which configured key (its index) an `Authorization` header carries.
    /// Every configured key is compared, with no early exit.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Option<usize> {
        let key = authorization.and_then(|h| h.strip_prefix(b"Bearer "))?;
        let guess = digest(&self.mac_key, key);
        let mut found = None;
        for (i, known) in self.digests.iter().enumerate() {
            if bool::from(known.ct_eq(&guess)) {
                found = Some(i);
            }
        }
        found
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

fn digest(mac_key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(mac_key).expect("HMAC takes a key of any length");
    mac.update(bytes);
    mac.finalize().into_bytes().into()
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
        assert_eq!(keys.identify(Some(b"Bearer k2")), Some(1));
        assert_eq!(keys.identify(Some(b"Bearer k1")), Some(0));
        assert!(!keys.allows(Some(b"Bearer k3")));
        assert!(!keys.allows(Some(b"Bearer k")));
        assert!(!keys.allows(Some(b"Bearer k11")));
        assert!(!keys.allows(Some(b"Bearer ")));
        assert!(!keys.allows(Some(b"k1")));
        assert!(!keys.allows(None));
        assert!(!ApiKeys::new(&[]).allows(Some(b"Bearer k1")));
    }

    fn signed(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let keys = TokenKeys::new(b"secret");
        let now = jsonwebtoken::get_current_timestamp();
        let later = signed(&serde_json::json!({"sub":"a","exp":now + 600,"nbf":now + 300}));
        assert_eq!(keys.verify(&later, 8), Err(TokenError::NotYetValid));
        let valid = signed(&serde_json::json!({"sub":"a","exp":now + 600,"nbf":now - 1}));
        assert_eq!(keys.verify(&valid, 8).unwrap().sub, "a");
        let bad = signed(&serde_json::json!({"sub":"a","exp":now + 600,"nbf":"soon"}));
        assert!(matches!(
            keys.verify(&bad, 8),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn lifetime_is_capped() {
        let keys = TokenKeys::new(b"secret").with_ttl_max(Duration::from_secs(3600));
        let now = jsonwebtoken::get_current_timestamp();
        let forever = signed(&serde_json::json!({"sub":"a","exp":u64::MAX}));
        assert_eq!(
            keys.verify(&forever, 8),
            Err(TokenError::LifetimeTooLong(3_600_000))
        );
        let long = signed(&serde_json::json!({"sub":"a","exp":now + 3700}));
        assert!(matches!(
            keys.verify(&long, 8),
            Err(TokenError::LifetimeTooLong(_))
        ));
        let ok = signed(&serde_json::json!({"sub":"a","exp":now + 3500}));
        assert!(keys.verify(&ok, 8).is_ok());
        // The default cap admits the CLI's largest documented lifetime.
        let week = TokenKeys::new(b"secret").mint("a", None, None, parse_ttl("7d").unwrap());
        assert!(TokenKeys::new(b"secret").verify(&week, 8).is_ok());
    }

    #[test]
    fn keys_from_config_take_the_lifetime_cap() {
        let auth = crate::config::AuthConfig {
            jwt_secret: "secret".into(),
            token_ttl_max_ms: 60_000,
            ..Default::default()
        };
        let keys = TokenKeys::from_config(&auth);
        let hour = keys.mint("a", None, None, Duration::from_secs(3600));
        assert!(matches!(
            keys.verify(&hour, 8),
            Err(TokenError::LifetimeTooLong(60_000))
        ));
        let minute = keys.mint("a", None, None, Duration::from_secs(50));
        assert!(keys.verify(&minute, 8).is_ok());
    }

    #[test]
    fn names_refuse_control_characters() {
        assert!(valid_name("alice"));
        assert!(valid_name("user:bob/é"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\nb"));
        assert!(!valid_name("a\u{0}"));
        assert!(!valid_name("\u{7f}"));
        assert!(!valid_name("\u{85}"));
        assert!(!valid_name(&"x".repeat(NAME_BYTES_MAX + 1)));
        let keys = TokenKeys::new(b"secret");
        let token = keys.mint("a\tb", None, None, Duration::from_secs(60));
        assert!(matches!(
            keys.verify(&token, 8),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        assert!(parse_ttl("1y").is_err());
    }
}
