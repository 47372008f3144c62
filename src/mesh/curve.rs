//! The cluster's CURVE identity, derived from the shared mesh key, and the
//! ZAP handler that admits only that identity.
//!
//! Every node holding `cluster.mesh_key` derives the same Curve25519 key
//! pair (HKDF-SHA256 of the key -> secret; libzmq's `zmq_curve_public` ->
//! public). Each node is CURVE server on its PUB socket and CURVE client on
//! its SUB sockets with that one pair, so a connection completes only when
//! both ends hold the key: a NULL-mechanism peer fails the greeting, a
//! CURVE peer without the secret fails the handshake, and a CURVE client
//! with any other key pair is refused by the ZAP handler (a thread on
//! `inproc://zeromq.zap.01`, RFC 27). The traffic is then encrypted and
//! authenticated per message by CURVE (RFC 26).

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use hkdf::Hkdf;
use sha2::Sha256;

pub use crate::config::MESH_KEY_BYTES_MIN;

/// HKDF salt and info: a new value makes a new cluster identity.
const KDF_SALT: &[u8] = b"corecast mesh";
const KDF_INFO: &[u8] = b"curve25519 secret v1";

/// The endpoint libzmq asks for ZAP decisions (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// The ZAP domain set on the PUB socket (libzmq consults the handler for
/// CURVE whatever the domain; the name shows in libzmq's requests).
pub const ZAP_DOMAIN: &str = "corecast-mesh";

/// How often the ZAP thread checks whether the mesh is stopping.
const ZAP_POLL_MS: i64 = 100;

/// Why a key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    #[error("cluster.mesh_key is {len} bytes: it must be at least {MESH_KEY_BYTES_MIN}")]
    KeyTooShort { len: usize },
    #[error("this libzmq has no CURVE support (install a libzmq built with libsodium)")]
    NoCurve,
    #[error("libzmq could not derive the CURVE public key")]
    Public,
}

/// The cluster's key pair (binary, 32 bytes each).
#[derive(Clone)]
pub struct ClusterKeys {
    pub public: [u8; 32],
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("public", &zmq::z85_encode(&self.public).unwrap_or_default())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClusterKeys {
    /// Derives the cluster key pair from the shared mesh key.
    pub fn derive(mesh_key: &str) -> Result<Self, CurveError> {
        if mesh_key.len() < MESH_KEY_BYTES_MIN {
            return Err(CurveError::KeyTooShort {
                len: mesh_key.len(),
            });
        }
        if !zmq::has("curve").unwrap_or(false) {
            return Err(CurveError::NoCurve);
        }
        let mut secret = [0u8; 32];
        Hkdf::<Sha256>::new(Some(KDF_SALT), mesh_key.as_bytes())
            .expand(KDF_INFO, &mut secret)
            .map_err(|_| CurveError::Public)?;
        let public = curve_public(&secret)?;
        Ok(Self { public, secret })
    }
}

// libzmq's zmq_curve_public(3) (>= 4.2), not re-exported by zmq-sys 0.11;
// the library is linked by zmq-sys.
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::ffi::c_char,
        z85_secret_key: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
}

/// The Curve25519 public key of `secret`, computed by libzmq (libsodium).
fn curve_public(secret: &[u8; 32]) -> Result<[u8; 32], CurveError> {
    let secret_z85 = zmq::z85_encode(secret).map_err(|_| CurveError::Public)?;
    let secret_c = CString::new(secret_z85).map_err(|_| CurveError::Public)?;
    // 40 Z85 characters and the terminating NUL.
    let mut public_z85 = [0u8; 41];
    // SAFETY: libzmq writes 41 bytes (40 + NUL) into `public_z85` and reads
    // a NUL-terminated 40-character string from `secret_c`, as documented
    // for zmq_curve_public(3).
    let rc = unsafe { zmq_curve_public(public_z85.as_mut_ptr().cast(), secret_c.as_ptr()) };
    if rc != 0 {
        return Err(CurveError::Public);
    }
    let text = std::str::from_utf8(&public_z85[..40]).map_err(|_| CurveError::Public)?;
    let bytes = zmq::z85_decode(text).map_err(|_| CurveError::Public)?;
    bytes.try_into().map_err(|_| CurveError::Public)
}

/// A running ZAP handler; stops when dropped.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandler {
    /// Binds the ZAP endpoint in `context` (before any CURVE socket exists)
    /// and answers requests on a thread: 200 for CURVE clients presenting
    /// `public`, 400 for everyone else (each refusal counted in `denied`).
    pub fn start(
        context: &zmq::Context,
        public: [u8; 32],
        denied: Arc<AtomicU64>,
    ) -> Result<Self, zmq::Error> {
        let socket = context.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corecast-zap".into())
            .spawn(move || serve(socket, public, &flag, &denied))
            .map_err(|_| zmq::Error::EMFILE)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: zmq::Socket, public: [u8; 32], stop: &AtomicBool, denied: &AtomicU64) {
    while !stop.load(Ordering::Acquire) {
        match socket.poll(zmq::POLLIN, ZAP_POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let Ok(request) = socket.recv_multipart(zmq::DONTWAIT) else {
            continue;
        };
        // Request (RFC 27): version, request id, domain, address, identity,
        // mechanism, credentials...
        let version = request.first().map(Vec::as_slice).unwrap_or(b"");
        let request_id = request.get(1).cloned().unwrap_or_default();
        let mechanism = request.get(5).map(Vec::as_slice).unwrap_or(b"");
        let key = request.get(6).map(Vec::as_slice).unwrap_or(b"");
        let allowed =
            version == b"1.0" && mechanism == b"CURVE" && request.len() == 7 && key == public;
        if !allowed {
            denied.fetch_add(1, Ordering::Relaxed);
        }
        let (status, text): (&[u8], &[u8]) = if allowed {
            (b"200", b"OK")
        } else {
            (b"400", b"not a cluster key")
        };
        let reply: [&[u8]; 6] = [b"1.0", &request_id, status, text, b"", b""];
        let _ = socket.send_multipart(reply, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gives_the_same_pair_and_short_keys_are_refused() {
        let key = "k".repeat(MESH_KEY_BYTES_MIN);
        let a = ClusterKeys::derive(&key).unwrap();
        let b = ClusterKeys::derive(&key).unwrap();
        assert_eq!(a.public, b.public);
        assert_eq!(a.secret, b.secret);
        assert_ne!(a.public, a.secret);
        let other = ClusterKeys::derive(&"j".repeat(40)).unwrap();
        assert_ne!(other.public, a.public);
        assert!(matches!(
            ClusterKeys::derive("short"),
            Err(CurveError::KeyTooShort { len: 5 })
        ));
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.secret)));
    }
}
