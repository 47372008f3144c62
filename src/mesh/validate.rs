//! Received envelopes are checked like API input before the node acts on
//! them (audit H1, L9): a peer, or whoever speaks for one, cannot hand the
//! cores a name, list, payload or origin the HTTP API would refuse. Pure
//! functions over owned values, unit-tested without sockets.

use crate::limits::{BATCH_USERS_MAX, NAME_BYTES_MAX, PUSH_BODY_BYTES_CEILING};
use crate::push::{ContentKind, Target};

/// Longest message id accepted from the mesh, in bytes (ids this code
/// mints are a short prefix and a counter).
pub const MESH_ID_BYTES_MAX: usize = NAME_BYTES_MAX;

/// Longest origin node id accepted from the mesh, in bytes.
pub const MESH_ORIGIN_BYTES_MAX: usize = NAME_BYTES_MAX;

/// Largest payload accepted from the mesh: the largest push body any node
/// may be configured to take.
pub const MESH_PAYLOAD_BYTES_MAX: usize = PUSH_BODY_BYTES_CEILING;

/// Why a received envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("origin node id empty, too long or with control characters")]
    Origin,
    #[error("message id empty, too long or with control characters")]
    Id,
    #[error("a user or room name empty, too long or with control characters")]
    Name,
    #[error("user list empty or longer than {BATCH_USERS_MAX}")]
    Users,
    #[error("payload larger than {MESH_PAYLOAD_BYTES_MAX} bytes")]
    PayloadSize,
    #[error("text payload is not UTF-8, or JSON payload is not valid JSON")]
    PayloadEncoding,
    #[error("stream stamp out of range (incarnation, core or seq)")]
    Stamp,
    #[error("idempotency key empty, too long or not visible ASCII")]
    IdempotencyKey,
}

/// Checks a push's stream stamp and idempotency key.
pub fn check_extras(
    stamp: Option<&crate::mesh::Stamp>,
    key: Option<&crate::mesh::KeyRef>,
) -> Result<(), Invalid> {
    if let Some(stamp) = stamp {
        let ok = stamp.incarnation < crate::history::position::INCARNATION_MAX
            && usize::from(stamp.core) < crate::limits::CORES_MAX
            && stamp.seq >= 1
            && stamp.seq < crate::history::position::SEQ_MAX;
        if !ok {
            return Err(Invalid::Stamp);
        }
    }
    if let Some(key) = key
        && crate::history::idempotency::validate_key(&key.key).is_err()
    {
        return Err(Invalid::IdempotencyKey);
    }
    Ok(())
}

/// A name as the API accepts it: 1..=`max` bytes, no control character.
fn valid(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

/// Checks a batch's origin node id.
pub fn check_origin(origin: &str) -> Result<(), Invalid> {
    if valid(origin, MESH_ORIGIN_BYTES_MAX) {
        Ok(())
    } else {
        Err(Invalid::Origin)
    }
}

/// Checks one envelope's id, target and payload.
pub fn check_envelope(
    id: &str,
    target: &Target,
    kind: ContentKind,
    payload: &[u8],
) -> Result<(), Invalid> {
    if !valid(id, MESH_ID_BYTES_MAX) {
        return Err(Invalid::Id);
    }
    let name = |n: &str| {
        if valid(n, NAME_BYTES_MAX) {
            Ok(())
        } else {
            Err(Invalid::Name)
        }
    };
    match target {
        Target::User(n) | Target::Room(n) | Target::Disconnect { uid: n } => name(n)?,
        Target::Users(uids) => {
            if uids.is_empty() || uids.len() > BATCH_USERS_MAX {
                return Err(Invalid::Users);
            }
            uids.iter().try_for_each(|u| name(u))?;
        }
        Target::Broadcast => {}
        Target::RoomJoin { room, uid } | Target::RoomLeave { room, uid } => {
            name(room)?;
            name(uid)?;
        }
    }
    if payload.len() > MESH_PAYLOAD_BYTES_MAX {
        return Err(Invalid::PayloadSize);
    }
    let encoded = match kind {
        ContentKind::Binary => true,
        ContentKind::Text => std::str::from_utf8(payload).is_ok(),
        // An empty JSON payload is what membership changes carry.
        ContentKind::Json => {
            payload.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
        }
    };
    if encoded {
        Ok(())
    } else {
        Err(Invalid::PayloadEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> Target {
        Target::User(n.into())
    }

    #[test]
    fn api_shaped_envelopes_pass() {
        let ok = |t: &Target, k, p: &[u8]| check_envelope("n-1", t, k, p);
        assert_eq!(ok(&user("alice"), ContentKind::Json, br#"{"a":1}"#), Ok(()));
        assert_eq!(
            ok(&Target::Broadcast, ContentKind::Text, "h\u{e9}".as_bytes()),
            Ok(())
        );
        assert_eq!(
            ok(&Target::Room("r".into()), ContentKind::Binary, &[0xff, 0]),
            Ok(())
        );
        let join = Target::RoomJoin {
            room: "r".into(),
            uid: "u".into(),
        };
        assert_eq!(ok(&join, ContentKind::Json, b""), Ok(()));
        assert_eq!(check_origin("node-a"), Ok(()));
    }

    #[test]
    fn names_ids_and_origins_are_checked() {
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        let p = b"1";
        assert_eq!(
            check_envelope("", &user("a"), ContentKind::Json, p),
            Err(Invalid::Id)
        );
        assert_eq!(
            check_envelope(&long, &user("a"), ContentKind::Json, p),
            Err(Invalid::Id)
        );
        for bad in ["", "a\nb", "a\u{0}", long.as_str()] {
            assert_eq!(
                check_envelope("i", &user(bad), ContentKind::Json, p),
                Err(Invalid::Name),
                "{bad:?}"
            );
            assert_eq!(check_origin(bad), Err(Invalid::Origin));
        }
        let users = |n: usize| Target::Users(vec!["u".into(); n]);
        assert_eq!(
            check_envelope("i", &users(0), ContentKind::Json, p),
            Err(Invalid::Users)
        );
        assert_eq!(
            check_envelope("i", &users(BATCH_USERS_MAX + 1), ContentKind::Json, p),
            Err(Invalid::Users)
        );
        assert_eq!(
            check_envelope("i", &users(BATCH_USERS_MAX), ContentKind::Json, p),
            Ok(())
        );
    }

    #[test]
    fn payloads_are_checked_by_kind_and_size() {
        let t = user("a");
        assert_eq!(
            check_envelope("i", &t, ContentKind::Text, &[0xff, 0xfe]),
            Err(Invalid::PayloadEncoding)
        );
        assert_eq!(
            check_envelope("i", &t, ContentKind::Json, b"{not json"),
            Err(Invalid::PayloadEncoding)
        );
        let big = vec![0u8; MESH_PAYLOAD_BYTES_MAX + 1];
        assert_eq!(
            check_envelope("i", &t, ContentKind::Binary, &big),
            Err(Invalid::PayloadSize)
        );
    }
}
