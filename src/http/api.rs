//! The push API and the operational endpoints, as DESIGN section 4 states
//! them: routes, API-key check, body parsing into a [`Push`], and JSON
//! answers and errors.

use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::body::{BodyError, Content};
use crate::auth::valid_name;
use crate::core::Core;
use crate::limits::BATCH_USERS_MAX;
use crate::metrics::{Limit, PushKind, Route};
use crate::push::{Push, Target, unix_micros};

type Answer = Response<Full<Bytes>>;

/// A refused request: status, machine code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn into_response(self) -> Answer {
        json(
            self.status,
            &serde_json::json!({"error": {"code": self.code, "message": self.message}}),
        )
    }
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
pub async fn handle(core: Rc<Core>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = route_of(&segments);
    let answer = match dispatch(&core, req, route, &segments).await {
        Ok(answer) => answer,
        Err(error) => error.into_response(),
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
        _ => Route::Other,
    }
}

fn method_is(req: &Request<Incoming>, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(req.method()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allowed:?}"),
        ))
    }
}

async fn dispatch(
    core: &Rc<Core>,
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
            return Ok(if core.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::OK, "text/plain", "ready\n")
            });
        }
        Route::Metrics => {
            method_is(&req, &[Method::GET])?;
            let body = scrape(core).await;
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
    if !core.node.api_keys.allows(authorization) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key (Authorization: Bearer <key>)",
        ));
    }
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
            push(core, req, target, PushKind::User).await
        }
        (Route::PushRoom, [_, _, _, room]) => {
            let target = Target::Room(name(room, "room")?);
            push(core, req, target, PushKind::Room).await
        }
        (Route::PushBroadcast, _) => push(core, req, Target::Broadcast, PushKind::Broadcast).await,
        (Route::PushUsers, _) => push(core, req, Target::Users(Vec::new()), PushKind::Users).await,
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
            "{what} must be 1..=256 bytes"
        )))
    }
}

fn refuse_while_draining(core: &Core) -> Result<(), ApiError> {
    if core.is_draining() {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; push to another node",
        ))
    } else {
        Ok(())
    }
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
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                ApiError::bad_request(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
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

async fn push(
    core: &Rc<Core>,
    req: Request<Incoming>,
    target: Target,
    kind: PushKind,
) -> Result<Answer, ApiError> {
    method_is(&req, &[Method::POST])?;
    refuse_while_draining(core)?;
    let batch = kind == PushKind::Users;
    let (media, body) = read_body(core, req).await?;
    let content = parse_content(&media, body, batch)?;
    let target = match (target, content.uids) {
        (Target::Users(_), Some(uids)) => {
            if uids.is_empty() || uids.len() > BATCH_USERS_MAX {
                return Err(ApiError::bad_request(format!(
                    "uids must list 1..={BATCH_USERS_MAX} users"
                )));
            }
            if let Some(bad) = uids.iter().find(|u| !valid_name(u)) {
                return Err(ApiError::bad_request(format!(
                    "uid {bad:?} must be 1..=256 bytes"
                )));
            }
            Target::Users(uids)
        }
        (target, _) => target,
    };
    let id = core.ids.next_id();
    let push = Push::new(
        id.clone(),
        &target,
        content.kind,
        content.payload,
        unix_micros(),
    );
    core.metrics.push(kind);
    match core.push(push, target).await {
        Ok(recipients) => Ok(accepted(&id, recipients)),
        Err(overloaded) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("the node cannot take this push now ({overloaded}); retry shortly"),
        )),
    }
}

async fn scrape(core: &Rc<Core>) -> String {
    let snapshots = core.snapshots().await;
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
    crate::metrics::render(collectors)
}
