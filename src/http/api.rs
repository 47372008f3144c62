//! The push API and the operational endpoints, as DESIGN section 4 states
//! them: routes (path segments strictly percent-decoded), API-key check,
//! push budgets (429), body parsing into a [`Push`], JSON answers and
//! errors, and the `/metrics` scrape with its per-core snapshot cache.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use super::HttpCore;
use super::body::{BodyError, Content};
use super::budget::OverBudget;
use crate::auth::valid_name;
pub use crate::auth::{SegmentError, decode_segment};
use crate::core::{Accepted, Core};
use crate::limits::NAME_BYTES_MAX;
use crate::mesh::KeyRef;
use crate::metrics::{CoreSnapshot, Limit, ProcessCollector, ProcessStats, PushKind, Route};
use crate::push::{Push, Target, unix_micros};

/// How long one core reuses the per-core snapshots (latency histograms,
/// busy time) of its last scrape: a scrape storm costs the other cores at
/// most one snapshot each per second. Counters are read fresh every time.
pub const SCRAPE_CACHE_MS: u64 = 1_000;

/// What a scrape served from the cache waits on the reactor.
const SCRAPE_YIELD: Duration = Duration::from_micros(1);

type Answer = Response<Full<Bytes>>;

/// A refused request: status, machine code, human message, and for 429 the
/// seconds to wait.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
    /// The methods a 405 names in its `Allow` header (RFC 9110 15.5.6).
    allow: Option<String>,
}

/// `Retry-After` of a 503 "overloaded": queues drain within milliseconds.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// `Retry-After` of a 503 "draining": by then another node (or this one,
/// restarted) takes the push.
const DRAINING_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn over_budget(over: OverBudget) -> Self {
        let (code, message) = match over {
            OverBudget::Key { .. } => (
                "key_over_budget",
                "this API key is over limits.key_pushes_per_sec_max on this node",
            ),
            OverBudget::Node { .. } => (
                "node_over_budget",
                "this node is over limits.node_pushes_per_sec_max",
            ),
        };
        Self {
            retry_after_secs: Some(over.retry_after_secs()),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    fn into_response(self) -> Answer {
        let mut answer = json(
            self.status,
            &serde_json::json!({"error": {"code": self.code, "message": self.message}}),
        );
        if let Some(secs) = self.retry_after_secs {
            answer
                .headers_mut()
                .insert(RETRY_AFTER, hyper::header::HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow
            && let Ok(value) = hyper::header::HeaderValue::from_str(&allow)
        {
            answer.headers_mut().insert(hyper::header::ALLOW, value);
        }
        answer
    }
}

/// One core's last scrape snapshots and when they were taken, with the
/// `process_*` figures read from `/proc` at the same time (`None` if that
/// read failed: the scrape then leaves them out).
#[derive(Default)]
pub struct ScrapeCache {
    taken: Cell<Option<Instant>>,
    snapshots: RefCell<Arc<Vec<CoreSnapshot>>>,
    process: Cell<Option<ProcessStats>>,
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Answers one HTTP request.
pub async fn handle(core: Rc<Core>, http: Rc<HttpCore>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let decoded: Vec<Result<String, SegmentError>> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let segments: Vec<&str> = decoded
        .iter()
        .map(|s| s.as_ref().map_or("", String::as_str))
        .collect();
    let route = route_of(&segments);
    let answer = match decoded.iter().find_map(|s| s.as_ref().err()) {
        Some(error) if route != Route::Other => ApiError::bad_request(format!(
            "path segment is not valid percent-encoding: {error}"
        ))
        .into_response(),
        _ => match dispatch(&core, &http, req, route, &segments).await {
            Ok(answer) => answer,
            Err(error) => error.into_response(),
        },
    };
    core.metrics.http(route, answer.status().as_u16());
    answer
}

fn route_of(segments: &[&str]) -> Route {
    match segments {
        ["healthz"] => Route::Health,
        ["readyz"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["v1", "push", "user", _] => Route::PushUser,
        ["v1", "push", "users"] => Route::PushUsers,
        ["v1", "push", "room", _] => Route::PushRoom,
        ["v1", "push", "broadcast"] => Route::PushBroadcast,
        ["v1", "rooms", _, "members", _] => Route::RoomMember,
        ["v1", "users", _] => Route::Presence,
        ["v1", "users", _, "connections"] => Route::UserConnections,
        _ => Route::Other,
    }
}

fn method_is(req: &Request<Incoming>, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(req.method()) {
        return Ok(());
    }
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Err(ApiError {
        allow: Some(allow.clone()),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allow}"),
        )
    })
}

async fn dispatch(
    core: &Rc<Core>,
    http: &HttpCore,
    req: Request<Incoming>,
    route: Route,
    segments: &[&str],
) -> Result<Answer, ApiError> {
    match route {
        Route::Health => {
            method_is(&req, &[Method::GET])?;
            return Ok(text(StatusCode::OK, "text/plain", "ok\n"));
        }
        Route::Ready => {
            method_is(&req, &[Method::GET])?;
            let starting = core.node.mesh.as_ref().is_some_and(|m| !m.subscribed());
            return Ok(if core.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else if starting {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            } else {
                text(StatusCode::OK, "text/plain", "ready\n")
            });
        }
        Route::Metrics => {
            method_is(&req, &[Method::GET])?;
            let body = scrape(core, &http.scrape).await;
            return Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            ));
        }
        Route::Other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {}", req.uri().path()),
            ));
        }
        _ => {}
    }
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let Some(key) = core.node.api_keys.identify(authorization) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key (Authorization: Bearer <key>)",
        ));
    };
    let pusher = Pusher { core, http, key };
    match (route, segments) {
        (Route::Presence, [_, _, uid]) => {
            method_is(&req, &[Method::GET])?;
            let uid = name(uid, "uid")?;
            let channels = core.presence(uid.clone()).await;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"uid": uid, "node": core.node.node_id, "channels": channels}),
            ))
        }
        (Route::UserConnections, [_, _, uid, _]) => {
            method_is(&req, &[Method::DELETE])?;
            let uid = name(uid, "uid")?;
            let id = core.ids.next_id();
            let closed = core.disconnect(&id, uid).await;
            Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"id": id, "closed": closed}),
            ))
        }
        (Route::RoomMember, [_, _, room, _, uid]) => {
            method_is(&req, &[Method::POST, Method::DELETE])?;
            refuse_while_draining(core)?;
            let join = req.method() == Method::POST;
            let (room, uid) = (name(room, "room")?, name(uid, "uid")?);
            let id = core.ids.next_id();
            let affected = core.membership(&id, room, uid, join).await;
            Ok(accepted(&id, affected))
        }
        (Route::PushUser, [_, _, _, uid]) => {
            let target = Target::User(name(uid, "uid")?);
            push(&pusher, req, target, PushKind::User).await
        }
        (Route::PushRoom, [_, _, _, room]) => {
            let target = Target::Room(name(room, "room")?);
            push(&pusher, req, target, PushKind::Room).await
        }
        (Route::PushBroadcast, _) => {
            push(&pusher, req, Target::Broadcast, PushKind::Broadcast).await
        }
        (Route::PushUsers, _) => {
            push(&pusher, req, Target::Users(Vec::new()), PushKind::Users).await
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

fn name(raw: &str, what: &str) -> Result<String, ApiError> {
    if valid_name(raw) {
        Ok(raw.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1..={NAME_BYTES_MAX} bytes with no control character"
        )))
    }
}

fn refuse_while_draining(core: &Core) -> Result<(), ApiError> {
    if core.is_draining() {
        Err(ApiError {
            retry_after_secs: Some(DRAINING_RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "node is draining; push to another node",
            )
        })
    } else {
        Ok(())
    }
}

/// The `Idempotency-Key` header, scoped by the API key that sent it.
fn idempotency_key(req: &Request<Incoming>, scope: u64) -> Result<Option<KeyRef>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| crate::history::idempotency::validate_key(k).is_ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                crate::history::idempotency::IdempotencyError::BadKey.to_string(),
            )
        })?;
    Ok(Some(KeyRef {
        scope,
        key: key.to_owned(),
    }))
}

fn accepted(id: &str, local_recipients: u32) -> Answer {
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"id": id, "local_recipients": local_recipients}),
    )
}

fn media_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn read_body(core: &Core, req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let max = core.config.limits.push_body_bytes_max;
    let too_big = || {
        core.metrics.refused(Limit::PushBodyBytes);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("push body is over push_body_bytes_max ({max} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let media = media_type(&req);
    // The watchdog never cuts a request in flight, so the body read has
    // its own idle limit: a client that stops sending its body is answered
    // 408 instead of holding the connection.
    let idle = Duration::from_millis(core.config.limits.http_idle_timeout_ms);
    let mut body = Limited::new(req.into_body(), max);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let next = futures_lite::future::or(async { Some(body.frame().await) }, async {
            glommio::timer::sleep(idle).await;
            None
        })
        .await;
        let frame = match next {
            None => {
                core.metrics.refused(Limit::HttpIdleTimeout);
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "no body bytes for http_idle_timeout_ms ({} ms)",
                        idle.as_millis()
                    ),
                ));
            }
            Some(None) => break,
            Some(Some(frame)) => frame.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_big()
                } else {
                    ApiError::bad_request(format!("could not read the body: {e}"))
                }
            })?,
        };
        if let Ok(data) = frame.into_data() {
            chunks.push(data);
        }
    }
    let body = match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in &chunks {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        }
    };
    Ok((media, body))
}

fn parse_content(media: &str, body: Bytes, batch: bool) -> Result<Content, ApiError> {
    super::body::parse_content(media, body, batch).map_err(|e| match e {
        BodyError::BadRequest(message) => ApiError::bad_request(message),
        BodyError::Unsupported(message) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
    })
}

/// Who is pushing: the core and its HTTP state, and the index of the API
/// key the request carries.
struct Pusher<'a> {
    core: &'a Rc<Core>,
    http: &'a HttpCore,
    key: usize,
}

async fn push(
    pusher: &Pusher<'_>,
    req: Request<Incoming>,
    target: Target,
    kind: PushKind,
) -> Result<Answer, ApiError> {
    let core = pusher.core;
    method_is(&req, &[Method::POST])?;
    refuse_while_draining(core)?;
    let idempotency = idempotency_key(&req, core.node.api_keys.scope(pusher.key))?;
    let batch = kind == PushKind::Users;
    let (media, body) = read_body(core, req).await?;
    // The budget is taken after the body is read, so the 429 reaches a
    // client that is still sending (no reset), and before any parsing.
    pusher
        .http
        .budgets
        .borrow_mut()
        .admit(pusher.key, Instant::now())
        .map_err(|over| {
            core.metrics.refused(match over {
                OverBudget::Key { .. } => Limit::KeyPushBudget,
                OverBudget::Node { .. } => Limit::NodePushBudget,
            });
            ApiError::over_budget(over)
        })?;
    let content = parse_content(&media, body, batch)?;
    let target = match (target, content.uids) {
        // body.rs checked the list while parsing: 1..=BATCH_USERS_MAX
        // valid, distinct names.
        (Target::Users(_), Some(uids)) => Target::Users(uids),
        (target, _) => target,
    };
    let id = core.ids.next_id();
    // The payload is kept in the history: copied out of the request's
    // buffer, so a slice of it does not keep the whole buffer alive.
    let payload = Bytes::copy_from_slice(&content.payload);
    let push = Push::new(id.clone(), content.kind, payload, unix_micros());
    core.metrics.push(kind);
    match core.push(push, target, idempotency).await {
        Ok(Accepted::New { recipients }) => Ok(accepted(&id, recipients)),
        Ok(Accepted::Duplicate { first_id }) => Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"id": first_id, "local_recipients": 0, "duplicate": true}),
        )),
        Err(overloaded) => Err(ApiError {
            retry_after_secs: Some(OVERLOADED_RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("the node cannot take this push now ({overloaded}); retry shortly"),
            )
        }),
    }
}

/// This core's snapshots of every core, taken at most once per
/// [`SCRAPE_CACHE_MS`].
async fn cached_snapshots(core: &Rc<Core>, cache: &ScrapeCache) -> Arc<Vec<CoreSnapshot>> {
    let fresh = cache
        .taken
        .get()
        .is_some_and(|t| t.elapsed() < Duration::from_millis(SCRAPE_CACHE_MS));
    if fresh {
        // Nothing to wait for: wait on the reactor anyway (a timer that is
        // due at once), so that scrapes pipelined on one connection let this
        // core's accepts, reads and deliveries in between; a plain task
        // yield does not poll the reactor (measured: pushes waited ~100 ms).
        glommio::timer::sleep(SCRAPE_YIELD).await;
    } else {
        let snapshots = Arc::new(core.snapshots().await);
        *cache.snapshots.borrow_mut() = snapshots;
        // A few small /proc reads (the fd count is one stat on Linux 6.2+),
        // at most once per SCRAPE_CACHE_MS like the snapshots.
        cache.process.set(ProcessStats::read().ok());
        cache.taken.set(Some(Instant::now()));
    }
    cache.snapshots.borrow().clone()
}

async fn scrape(core: &Rc<Core>, cache: &ScrapeCache) -> String {
    let snapshots = cached_snapshots(core, cache).await;
    let node = &core.node;
    let collector = crate::metrics::NodeCollector {
        facts: crate::metrics::NodeFacts {
            node_id: node.node_id.clone(),
            max_connections: node.config.limits.max_connections,
            ready: !core.is_draining(),
        },
        cores: node.core_metrics.clone(),
        snapshots,
    };
    let mut collectors: Vec<Box<dyn prometheus_client::collector::Collector>> =
        vec![Box::new(collector)];
    collectors.extend(crate::mesh::collectors(&node.mesh_metrics));
    if let Some(process) = cache.process.get() {
        collectors.push(Box::new(ProcessCollector(process)));
    }
    crate::metrics::render(collectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_strictly() {
        assert_eq!(decode_segment("alice").unwrap(), "alice");
        assert_eq!(decode_segment("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(decode_segment("%C3%A9").unwrap(), "é");
        assert_eq!(decode_segment("").unwrap(), "");
        assert_eq!(decode_segment("%FF"), Err(SegmentError::NotUtf8));
        assert_eq!(decode_segment("%FE"), Err(SegmentError::NotUtf8));
        assert_eq!(decode_segment("%C3"), Err(SegmentError::NotUtf8));
        assert_eq!(decode_segment("%"), Err(SegmentError::BadEscape));
        assert_eq!(decode_segment("%4"), Err(SegmentError::BadEscape));
        assert_eq!(decode_segment("%ZZ"), Err(SegmentError::BadEscape));
        assert_eq!(decode_segment("a%+1"), Err(SegmentError::BadEscape));
        // Decoded control characters are left to the name check.
        assert_eq!(decode_segment("a%0Ab").unwrap(), "a\nb");
        assert!(!valid_name(&decode_segment("a%0Ab").unwrap()));
    }

    #[test]
    fn over_budget_answers_429_with_retry_after() {
        let answer = ApiError::over_budget(OverBudget::Key {
            retry_after: Duration::from_millis(1500),
        })
        .into_response();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()[RETRY_AFTER], "2");
    }
}
