//! `corecast config check` and `corecast config default` run as the real
//! binary, and a `CORECAST_<SECTION>_<KEY>` variable taking effect on a
//! running node.

mod common;
use common::Node;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn corecast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(args)
        .output()
        .expect("run corecast")
}

/// A file of this test's own under the target directory.
fn write_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_good_file() {
    let path = write_file(
        "good.toml",
        "[ws]\nlisten = \"127.0.0.1:9000\"\nallowed_origins = [\"https://app.example\"]\n\
         [limits]\nmax_connections = 5000\nsend_queue_bytes_max = 2097152\n\
         [cluster]\nmesh_listen = \"tcp://127.0.0.1:7000\"\nmesh_peers = [\"tcp://127.0.0.1:7001\"]\n",
    );
    let out = corecast(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
}

#[test]
fn check_lists_every_error_with_its_key_and_exits_1() {
    let path = write_file(
        "bad.toml",
        "[limits]\nmax_conections = 3\nsend_queue_bytes_max = \"lots\"\nmax_connections = 0\n\
         [heartbeat]\nping_interval_ms = 25000\nidle_timeout_ms = 1000\n",
    );
    let out = corecast(&["config", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for expected in [
        "unknown key limits.max_conections",
        "wrong type for limits.send_queue_bytes_max",
        "invalid value for limits.max_connections",
        "invalid value for heartbeat.idle_timeout_ms",
        "4 error(s)",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in\n{stderr}");
    }
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));

    let out = corecast(&["config", "check", "--config", "/nonexistent/corecast.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read config file"));
    let syntax = write_file("syntax.toml", "[limits\n");
    let out = corecast(&["config", "check", "--config", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid config file"));
}

#[test]
fn config_default_piped_into_config_check_is_ok() {
    let mut default = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["config", "default"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["config", "check", "--config", "/dev/stdin"])
        .stdin(default.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(default.wait().unwrap().success());
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert_eq!(text(&check.stdout).trim(), "ok");

    let out = corecast(&["config", "default"]);
    let toml = text(&out.stdout);
    for line in [
        "[limits]",
        "send_queue_bytes_max = 1048576",
        "CORECAST_LIMITS_SEND_QUEUE_BYTES_MAX",
        "CORECAST_MAX_CONNECTIONS, CORECAST_LIMITS_MAX_CONNECTIONS",
        "listen = \"127.0.0.1:8080\"",
    ] {
        assert!(toml.contains(line), "no {line:?} in\n{toml}");
    }
}

/// At 3 messages per second (the default is 20) a burst of 5 gets the
/// `rate_limited` error frame after at most 3 answers.
#[test]
fn a_section_key_variable_takes_effect_on_a_running_node() {
    let node = Node::start_with(&[("CORECAST_LIMITS_CLIENT_MESSAGES_PER_SEC_MAX", "3")]);
    let mut client = node.connect_rooms("u", &["r"]);
    for _ in 0..5 {
        client.send_text(r#"{"type":"join","room":"r"}"#);
    }
    let mut acks = 0;
    loop {
        let msg = client.recv_json();
        match msg["type"].as_str() {
            Some("joined") => acks += 1,
            Some("error") => {
                assert_eq!(msg["error"]["code"], "rate_limited", "{msg}");
                break;
            }
            other => panic!("unexpected {other:?}: {msg}"),
        }
    }
    assert!(acks <= 3, "{acks} messages were served past a limit of 3");
    assert!(node.metric("corecast_limit_refusals_total{limit=\"client_message_rate\"}") >= 1.0);
}
