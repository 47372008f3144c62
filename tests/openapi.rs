//! docs/openapi.yaml against a real node (issue 14): the spec's routes are
//! exactly the node's (the route table read from `route_of` in
//! src/http/api.rs, and every method tried live), every documented
//! operation answers a real request with a status the spec lists and a body
//! its schema accepts, and every error status the tests can provoke (400,
//! 401, 404, 405, 408, 413, 415, 429 with Retry-After, 503 "draining") is
//! listed for the route that gave it. Then schemathesis (PyPI, pinned, in
//! the venv `.ci/test` makes) fuzzes the node from the spec.

mod common;
use common::{API_KEY, Node};

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Methods tried on every path: those the spec lists must not be 405, the
/// others must be.
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

/// `limits.http_idle_timeout_ms` of the node that is asked for a 408.
const IDLE_TIMEOUT_MS: &str = "500";

/// `shutdown.drain_period_ms` of the node that is asked while it drains,
/// and how many clients it holds then.
const DRAIN_PERIOD_MS: &str = "10000";
const DRAIN_CLIENTS: usize = 10;

/// Over the default `limits.push_body_bytes_max` (65536).
const TOO_BIG_BYTES: usize = 70_000;

/// Where `.ci/test` makes schemathesis's venv, under the crate root, and
/// the version it installs there.
const SCHEMATHESIS_VENV: &str = "target/schemathesis-venv";
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Examples per operation and the fixed seed of the schemathesis run (so a
/// failure reproduces). Measured: about 8 s for the 10 operations with
/// `schemathesis run docs/openapi.yaml -n 20 -c all` on this machine.
const SCHEMATHESIS_EXAMPLES: &str = "20";
const SCHEMATHESIS_SEED: &str = "14";
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(180);

/// schemathesis's settings: a request the schema forbids may also be
/// refused 413 (a batch past the body cap is refused by its size before its
/// uids are counted).
const SCHEMATHESIS_CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413", "415", "429"]
"#;

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec() -> Value {
    yaml_serde::from_str(&repo_file("docs/openapi.yaml")).expect("docs/openapi.yaml parses")
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            resolve(spec, spec.pointer(pointer).unwrap_or_else(|| panic!("{r}")))
        }
        None => v,
    }
}

/// `/v1/push/user/{uid}` -> `/v1/push/user/{}`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The routes `route_of` in src/http/api.rs matches, as path shapes: each
/// `["v1", "users", _] => Route::Presence` arm gives `/v1/users/{}`.
fn node_routes() -> BTreeSet<String> {
    let source = repo_file("src/http/api.rs");
    let body = source
        .split("fn route_of(")
        .nth(1)
        .expect("src/http/api.rs has fn route_of")
        .split("\n}\n")
        .next()
        .unwrap();
    let routes: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix('['))
        .filter_map(|l| l.split_once("] => Route::").map(|(pattern, _)| pattern))
        .map(|pattern| {
            pattern
                .split(", ")
                .map(|s| if s == "_" { "{}" } else { s.trim_matches('"') })
                .fold(String::new(), |path, s| format!("{path}/{s}"))
        })
        .collect();
    assert!(routes.len() >= 9, "route table not found: {routes:?}");
    routes
}

/// A real request's status, Retry-After and body.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    /// The `Allow` header (a 405 must name the path's methods).
    allow: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("status {} body {:?}: {e}", self.status, self.body))
    }
}

fn call(node: &Node, method: &str, path: &str, auth: bool, body: Option<(&str, &[u8])>) -> Reply {
    // A new connection each time: a drain closes idle keep-alive ones.
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout(Duration::from_secs(10))
        .build();
    let mut request = agent.request(method, &node.url(path));
    if auth {
        request = request.set("Authorization", &format!("Bearer {API_KEY}"));
    }
    let result = match body {
        Some((content_type, bytes)) => request.set("Content-Type", content_type).send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    Reply {
        status: response.status(),
        retry_after: response.header("Retry-After").map(str::to_string),
        allow: response.header("Allow").map(str::to_string),
        body: response.into_string().unwrap_or_default(),
    }
}

/// Checks `value` against the subset of JSON Schema the spec uses (type,
/// required, properties, items, min/maxItems, minimum, nullable, $ref).
fn check_schema(spec: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(spec, schema);
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {value} is not an object"));
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap();
                assert!(object.contains_key(key), "{at}: {value} lacks {key}");
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (key, sub) in properties {
                    if let Some(v) = object.get(key) {
                        check_schema(spec, sub, v, &format!("{at}.{key}"));
                    }
                }
            }
        }
        Some("array") => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {value} is not an array"));
            for (i, item) in items.iter().enumerate() {
                check_schema(spec, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => assert!(value.is_string(), "{at}: {value} is not a string"),
        Some("integer") => {
            let n = value
                .as_i64()
                .unwrap_or_else(|| panic!("{at}: {value} is not an integer"));
            if let Some(min) = schema["minimum"].as_i64() {
                assert!(n >= min, "{at}: {n} < {min}");
            }
        }
        None => {} // any JSON value
        Some(other) => panic!("{at}: schema type {other} not handled by this check"),
    }
}

/// The response object the spec gives for `status` on `method path`.
fn documented<'a>(spec: &'a Value, path: &str, method: &str, status: u16) -> Option<&'a Value> {
    let responses = &spec["paths"][path][method.to_ascii_lowercase()]["responses"];
    responses.get(status.to_string()).map(|r| resolve(spec, r))
}

/// Asserts that the spec lists `reply`'s status for `method path` and that
/// a JSON body fits the schema it gives; returns the JSON body.
fn assert_documented(spec: &Value, path: &str, method: &str, reply: &Reply) -> Option<Value> {
    let response = documented(spec, path, method, reply.status).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {} ({}), which docs/openapi.yaml does not list",
            reply.status, reply.body
        )
    });
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return None;
    }
    let body = reply.json();
    check_schema(
        spec,
        schema,
        &body,
        &format!("{method} {path} {}", reply.status),
    );
    if let Some(secs) = &reply.retry_after {
        assert!(
            response["headers"].get("Retry-After").is_some(),
            "{method} {path} {} sends Retry-After, which the spec does not list",
            reply.status
        );
        secs.parse::<u64>()
            .unwrap_or_else(|_| panic!("Retry-After {secs:?} is not seconds"));
    }
    Some(body)
}

/// `path` with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{uid}", "alice").replace("{room}", "lobby")
}

/// A valid body for the push route `path` in each media type it takes.
fn valid_bodies(spec: &Value, path: &str) -> Vec<(String, Vec<u8>)> {
    let operation = &spec["paths"][path]["post"];
    let Some(body) = operation.get("requestBody") else {
        return vec![];
    };
    let content = resolve(spec, body)["content"].as_object().unwrap();
    content
        .keys()
        .map(|media| {
            let bytes: Vec<u8> = match (media.as_str(), path) {
                ("application/json", "/v1/push/users") => {
                    br#"{"uids":["alice","bob"],"data":{"n":1}}"#.to_vec()
                }
                ("application/json", _) => br#"{"data":{"n":1}}"#.to_vec(),
                ("text/plain", _) => b"hello".to_vec(),
                ("application/octet-stream", _) => vec![0, 1, 2, 255],
                (other, _) => panic!("no sample body for {other}"),
            };
            (media.clone(), bytes)
        })
        .collect()
}

/// Reads one HTTP/1.1 answer with a Content-Length: status and body.
fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read the answer");
        assert!(n > 0, "closed before a whole answer: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("Content-Length");
        if body.len() >= length {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, body[..length].to_string());
        }
    }
}

#[test]
fn spec_routes_are_the_node_routes() {
    let spec = spec();
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3"
    );
    let documented: BTreeSet<String> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|p| shape(p))
        .collect();
    assert_eq!(
        documented,
        node_routes(),
        "docs/openapi.yaml paths vs route_of in src/http/api.rs"
    );
    // Bearer auth on every /v1 operation, none on the operational ones.
    let scheme = &spec["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let security = operation["security"].as_array().unwrap();
            assert_eq!(
                security.is_empty(),
                !path.starts_with("/v1/"),
                "{method} {path} security {security:?}"
            );
        }
    }
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let spec = spec();
    let node = Node::start();
    let _alice = node.connect("alice");
    // The presence answer lists alice's connection (its schema is checked
    // below with every operation); checked first because one of them,
    // DELETE /v1/users/{uid}/connections, closes it.
    let presence = call(&node, "GET", "/v1/users/alice", true, None).json();
    assert_eq!(
        presence["channels"].as_array().unwrap().len(),
        1,
        "{presence}"
    );
    let paths = spec["paths"].as_object().unwrap();
    for (path, item) in paths {
        let url = concrete(path);
        let listed: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for method in METHODS {
            let auth = path.starts_with("/v1/");
            if !listed.iter().any(|m| m == method) {
                // A method the spec does not list is refused, and the 405 is
                // documented for the path.
                let reply = call(&node, method, &url, auth, None);
                assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
                let allow: BTreeSet<String> = reply
                    .allow
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .collect();
                let spec_methods: BTreeSet<String> = listed.iter().cloned().collect();
                assert_eq!(
                    allow, spec_methods,
                    "{method} {path}: the Allow header names the spec's methods"
                );
                let first = listed[0].as_str();
                assert_documented(&spec, path, first, &reply);
                continue;
            }
            let bodies = valid_bodies(&spec, path);
            let replies: Vec<Reply> = if bodies.is_empty() || *method != "POST" {
                vec![call(&node, method, &url, auth, None)]
            } else {
                bodies
                    .iter()
                    .map(|(media, bytes)| call(&node, method, &url, auth, Some((media, bytes))))
                    .collect()
            };
            for reply in replies {
                assert!(
                    matches!(reply.status, 200 | 202),
                    "a valid {method} {path} answered {}: {}",
                    reply.status,
                    reply.body
                );
                assert_documented(&spec, path, method, &reply);
            }
        }
    }
}

#[test]
fn provoked_errors_are_documented() {
    let spec = spec();
    let node = Node::start_with(&[("CORECAST_HTTP_IDLE_TIMEOUT_MS", IDLE_TIMEOUT_MS)]);
    let json = "application/json";
    let check = |path: &str, method: &str, reply: Reply, want: u16, code: &str| {
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body);
        let body = assert_documented(&spec, path, method, &reply)
            .unwrap_or_else(|| panic!("{method} {path} {want} has no JSON schema"));
        assert_eq!(body["error"]["code"], code, "{body}");
    };
    let user = "/v1/push/user/{uid}";
    let at = "/v1/push/user/alice";

    let bad_json = call(&node, "POST", at, true, Some((json, b"{\"data\":")));
    check(user, "POST", bad_json, 400, "bad_request");
    let bad_escape = call(
        &node,
        "POST",
        "/v1/push/user/%FF",
        true,
        Some((json, b"{}")),
    );
    check(user, "POST", bad_escape, 400, "bad_request");
    let bad_text = call(&node, "POST", at, true, Some(("text/plain", b"\xff\xfe")));
    check(user, "POST", bad_text, 400, "bad_request");
    let no_uids = call(
        &node,
        "POST",
        "/v1/push/users",
        true,
        Some((json, b"{\"data\":1}")),
    );
    check("/v1/push/users", "POST", no_uids, 400, "bad_request");

    let no_key = call(&node, "POST", at, false, Some((json, b"{\"data\":1}")));
    check(user, "POST", no_key, 401, "unauthorized");
    let no_key = call(&node, "GET", "/v1/users/alice", false, None);
    check("/v1/users/{uid}", "GET", no_key, 401, "unauthorized");

    // An unescaped '/' in a name: no route.
    let slash = call(
        &node,
        "POST",
        "/v1/push/user/a/b",
        true,
        Some((json, b"{}")),
    );
    check(user, "POST", slash, 404, "not_found");
    let unknown = call(&node, "GET", "/v1/nope", true, None);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "not_found");

    let wrong = call(&node, "GET", "/v1/push/broadcast", true, None);
    check(
        "/v1/push/broadcast",
        "POST",
        wrong,
        405,
        "method_not_allowed",
    );

    let big = format!("{{\"data\":\"{}\"}}", "x".repeat(TOO_BIG_BYTES));
    let too_big = call(&node, "POST", at, true, Some((json, big.as_bytes())));
    check(user, "POST", too_big, 413, "body_too_large");

    let png = call(&node, "POST", at, true, Some(("image/png", b"\x89PNG")));
    check(user, "POST", png, 415, "unsupported_media_type");
    let batch_text = call(
        &node,
        "POST",
        "/v1/push/users",
        true,
        Some(("text/plain", b"hi")),
    );
    check(
        "/v1/push/users",
        "POST",
        batch_text,
        415,
        "unsupported_media_type",
    );

    // A body that stops half way: 408 after the idle timeout.
    let mut stream = TcpStream::connect(node.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {at} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"data\""
    )
    .unwrap();
    let (status, body) = read_answer(&mut stream);
    let timeout = Reply {
        status,
        retry_after: None,
        allow: None,
        body: body.to_string(),
    };
    check(user, "POST", timeout, 408, "body_timeout");
    // Counted under its own status (it was counted as 500 before).
    node.wait_metric(
        "corecast_http_requests_total{route=\"push_user\",status=\"408\"}",
        1.0,
    );
}

#[test]
fn budget_and_drain_refusals_are_documented() {
    let spec = spec();
    let node = Node::start_with(&[
        ("CORECAST_CORES", "1"),
        ("CORECAST_KEY_PUSHES_PER_SEC_MAX", "1"),
        ("CORECAST_DRAIN_PERIOD_MS", DRAIN_PERIOD_MS),
    ]);
    // The drain closes connections in DRAIN_STEPS (50) steps over the
    // period and ends when none is left: these keep it going for
    // DRAIN_CLIENTS / 50 of the period (2 s), long enough to be asked.
    let _clients: Vec<_> = (0..DRAIN_CLIENTS)
        .map(|i| node.connect(&format!("d{i}")))
        .collect();
    let json = "application/json";
    let body: &[u8] = b"{\"data\":1}";
    let path = "/v1/push/broadcast";
    // One push per second for the key: the second within the second is 429.
    let replies: Vec<Reply> = (0..3)
        .map(|_| call(&node, "POST", path, true, Some((json, body))))
        .collect();
    let over = replies.iter().find(|r| r.status == 429).unwrap_or_else(|| {
        panic!(
            "no 429 in {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        )
    });
    let answer = assert_documented(&spec, path, "POST", over).unwrap();
    assert_eq!(answer["error"]["code"], "key_over_budget");
    let secs: u64 = over
        .retry_after
        .as_deref()
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert!(documented(&spec, path, "POST", 429).unwrap()["headers"]["Retry-After"].is_object());

    node.signal(nix::sys::signal::Signal::SIGTERM);
    common::wait_for("/readyz 503", Duration::from_secs(2), || {
        call(&node, "GET", "/readyz", false, None).status == 503
    });
    let readyz = call(&node, "GET", "/readyz", false, None);
    assert_documented(&spec, "/readyz", "GET", &readyz);
    let push = call(&node, "POST", path, true, Some((json, body)));
    assert_eq!(push.status, 503, "{}", push.body);
    let answer = assert_documented(&spec, path, "POST", &push).unwrap();
    assert_eq!(answer["error"]["code"], "draining");
    assert_eq!(push.retry_after.as_deref(), Some("1"));
    let member = "/v1/rooms/{room}/members/{uid}";
    let join = call(&node, "POST", &concrete(member), true, None);
    assert_eq!(join.status, 503, "{}", join.body);
    let answer = assert_documented(&spec, member, "POST", &join).unwrap();
    assert_eq!(answer["error"]["code"], "draining");
}

/// The schemathesis CLI of the venv, when it is [`SCHEMATHESIS_VERSION`].
fn schemathesis() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMATHESIS_VENV);
    let version = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    (String::from_utf8_lossy(&version.stdout).trim() == SCHEMATHESIS_VERSION)
        .then(|| venv.join("bin/schemathesis"))
}

#[test]
fn schemathesis_finds_nothing() {
    let Some(cli) = schemathesis() else {
        let hint = format!(
            "schemathesis {SCHEMATHESIS_VERSION} not found in {SCHEMATHESIS_VENV}: run .ci/test, or \
             `python3 -m venv {SCHEMATHESIS_VENV} && \
             {SCHEMATHESIS_VENV}/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}`"
        );
        assert!(std::env::var_os("CI").is_none(), "CI is set: {hint}");
        eprintln!("SKIPPED: {hint}");
        return;
    };
    let node = Node::start();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    // Its output goes to a file (a pipe could fill and stall it), and it
    // runs in a directory of its own (hypothesis writes .hypothesis/ there).
    let dir = std::env::temp_dir().join(format!("corecast-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("out.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    let mut child = Command::new(cli)
        .current_dir(&dir)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(spec)
        .args(["--url", &node.url("")])
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        .args(["--max-examples", SCHEMATHESIS_EXAMPLES])
        .args(["--seed", SCHEMATHESIS_SEED])
        .args(["--checks", "all"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SCHEMATHESIS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("schemathesis ran over {SCHEMATHESIS_TIMEOUT:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "schemathesis: {status}\n{out}");
    let operations: usize = self::spec()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .count()
        })
        .sum();
    assert!(
        out.contains(&format!("Tested: {operations}\n")),
        "not every one of the {operations} operations was tested:\n{out}"
    );
}
