//! Without `CORECAST_MESH_KEY` the mesh may only use loopback addresses: a
//! node asked to bind or reach any other address refuses to start with a
//! clear message, and so does a node given a key that is too short.

mod common;
use common::free_port;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a node with `env` and returns its exit status and stderr; panics if
/// it is still running after 20 s (it must refuse at once).
fn refused(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corecast"));
    command
        .env("CORECAST_WS_LISTEN", "127.0.0.1:0")
        .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
        .env("CORECAST_JWT_SECRET", common::SECRET)
        .env("CORECAST_API_KEYS", common::API_KEY)
        .env("CORECAST_CORES", "1")
        .env_remove("CORECAST_MESH_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn corecast");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started instead of refusing: {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn a_non_loopback_mesh_without_a_key_refuses_to_start() {
    let loopback = format!("tcp://127.0.0.1:{}", free_port());
    let wildcard = format!("tcp://0.0.0.0:{}", free_port());
    let remote = "tcp://192.0.2.10:7000";
    for (listen, peers) in [
        (wildcard.as_str(), loopback.as_str()),
        (loopback.as_str(), remote),
    ] {
        let (status, stderr) = refused(&[
            ("CORECAST_MESH_LISTEN", listen),
            ("CORECAST_MESH_PEERS", &format!("{listen},{peers}")),
        ]);
        assert!(!status.success(), "{status:?}");
        assert!(
            stderr.contains("not a loopback address") && stderr.contains("CORECAST_MESH_KEY"),
            "unclear refusal: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_short_mesh_key_refuses_to_start() {
    let listen = format!("tcp://127.0.0.1:{}", free_port());
    let peer = format!("tcp://127.0.0.1:{}", free_port());
    let (status, stderr) = refused(&[
        ("CORECAST_MESH_LISTEN", &listen),
        ("CORECAST_MESH_PEERS", &peer),
        ("CORECAST_MESH_KEY", "only-20-bytes-long.."),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("mesh_key") && stderr.contains("at least 32 bytes"),
        "unclear refusal: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
