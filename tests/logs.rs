//! The node's log on a real process: JSON lines with level and timestamp,
//! the operator's lines (start, ready, refused-handshake summary, drain),
//! no token text, a glommio `log` record forwarded into the same output,
//! and start-up errors that name their cause (memlock too low, io_uring
//! blocked by a seccomp filter), each triggered for real in the child.

mod common;

use std::time::Duration;

use common::{API_KEY, Node, SECRET, WAIT};
use serde_json::Value;

/// How long a refused-handshake summary may take: one summary interval
/// (corecast::logging::REFUSAL_SUMMARY_MS) plus a margin.
const SUMMARY_WAIT: Duration = Duration::from_millis(corecast::logging::REFUSAL_SUMMARY_MS + 5_000);

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

fn is_message(line: &str, want: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| message(&v) == want)
}

#[test]
fn json_log_has_levels_timestamps_and_the_operator_lines_but_no_token() {
    let (node, stderr) = Node::start_capturing_stderr(&[("CORECAST_LOG_FORMAT", "json")]);
    let start = parse(&stderr.wait_line("the start line", WAIT, |l| is_message(l, "starting")));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["cores"], 2);
    assert!(start["max_connections"].is_u64(), "{start}");
    stderr.wait_line("the ready line", WAIT, |l| is_message(l, "ready"));

    let good_token = node.token("alice", None);
    let mut client = node.connect_with_token(&good_token);
    let bad_token = "not-a-jwt-LOGS-TEST-MARKER";
    for _ in 0..3 {
        assert_eq!(
            node.try_connect(&format!("/ws?token={bad_token}")).err(),
            Some(401)
        );
    }
    // One summary per core that refused some: they add up to three.
    let summaries = || -> Vec<Value> {
        stderr
            .lines()
            .iter()
            .map(|l| parse(l))
            .filter(|v| message(v) == "refused handshakes")
            .collect()
    };
    let deadline = std::time::Instant::now() + SUMMARY_WAIT;
    while summaries()
        .iter()
        .map(|v| v["refused"].as_u64().unwrap())
        .sum::<u64>()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary of 3 refusals in {SUMMARY_WAIT:?}:\n{}",
            stderr.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for summary in summaries() {
        let n = summary["refused"].as_u64().unwrap();
        assert_eq!(
            summary["reasons"],
            format!("token_malformed={n}"),
            "{summary}"
        );
        assert!(summary["core"].is_u64(), "{summary}");
    }

    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(client.expect_close(), 1001);
    let mut node = node;
    assert!(node.wait_exit(WAIT).success());
    let lines = stderr.wait_end(WAIT);
    let all = lines.join("\n");

    for line in &lines {
        let v = parse(line);
        assert!(v["level"].is_string(), "no level: {line}");
        let timestamp = v["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no timestamp: {line}"));
        assert!(timestamp.starts_with("20"), "not RFC 3339: {line}");
    }
    let drain = lines
        .iter()
        .map(|l| parse(l))
        .find(|v| message(v) == "drain started");
    let drain = drain.unwrap_or_else(|| panic!("no drain start in\n{all}"));
    assert_eq!(drain["signal"], "SIGTERM");
    assert_eq!(drain["connections"], 1);
    let closed: u64 = lines
        .iter()
        .map(|l| parse(l))
        .filter(|v| message(v) == "core drained")
        .map(|v| v["closed"].as_u64().expect("closed"))
        .sum();
    assert_eq!(closed, 1, "{all}");
    assert!(
        lines.iter().any(|l| is_message(l, "drained, exiting")),
        "{all}"
    );
    for secret in [bad_token, good_token.as_str(), SECRET, API_KEY] {
        assert!(!all.contains(secret), "the log shows {secret:?}:\n{all}");
    }
}

#[test]
fn text_log_has_level_and_timestamp() {
    let (node, stderr) = Node::start_capturing_stderr(&[("CORECAST_LOG_FORMAT", "text")]);
    let line = stderr.wait_line("the start line", WAIT, |l| l.contains("starting"));
    let mut words = line.split_whitespace();
    assert!(
        words
            .next()
            .is_some_and(|t| t.starts_with("20") && t.contains('T')),
        "{line}"
    );
    assert_eq!(words.next(), Some("INFO"), "{line}");
    drop(node);
}

/// Runs a node with `prepare` run in the child before exec; it must exit
/// before it is ready. Returns its stderr.
fn run_failing(prepare: common::PreExec) -> String {
    let (node, stderr) = Node::try_start_prepared(
        &[("CORECAST_LOG_FORMAT", "json"), ("CORECAST_CORES", "1")],
        prepare,
    );
    let all = stderr.wait_end(WAIT).join("\n");
    match node {
        Ok(_) => panic!("the node started:\n{all}"),
        Err(e) => assert!(!all.is_empty(), "nothing on stderr ({e})"),
    }
    all
}

/// The message of the first ERROR line in `stderr` (JSON lines).
fn error_message(stderr: &str) -> String {
    let error = stderr
        .lines()
        .map(parse)
        .find(|v| v["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    message(&error).to_string()
}

fn set_memlock(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn memlock_too_low_names_the_limit_and_the_fix() {
    let _one = MEMLOCK.lock().unwrap_or_else(|e| e.into_inner());
    let stderr = run_failing(Box::new(|| set_memlock(64 * 1024)));
    let text = error_message(&stderr);
    assert!(
        text.contains("locked-memory limit too low")
            && text.contains("RLIMIT_MEMLOCK=65536")
            && text.contains("LimitMEMLOCK")
            && text.contains("Requirements"),
        "{text}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A seccomp filter that fails `io_uring_setup` with EPERM, as Docker's
/// default profile does, and allows every other syscall.
fn block_io_uring() -> std::io::Result<()> {
    // linux/bpf_common.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K,
    // BPF_RET|BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let mut filter = [
        // seccomp_data.nr is at offset 0.
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with valid arguments; the program outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn io_uring_blocked_by_seccomp_names_the_cause_and_the_fix() {
    let stderr = run_failing(Box::new(block_io_uring));
    let text = error_message(&stderr);
    assert!(
        text.contains("io_uring is blocked (seccomp or kernel.io_uring_disabled=")
            && text.contains("seccomp=unconfined")
            && text.contains("Requirements"),
        "{text}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Root is exempt from the locked-memory limit through CAP_IPC_LOCK: drop
/// it from the bounding set, which root's exec turns into the permitted set.
/// EPERM (not root): there is no exemption to drop.
fn drop_ipc_lock() {
    const CAP_IPC_LOCK: libc::c_ulong = 14;
    // SAFETY: prctl with valid arguments.
    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) };
}

/// The kernel charges locked memory to the user, across processes: the
/// tests that lower it run one at a time.
static MEMLOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn enomem_from_io_uring_setup_names_memlock() {
    let _one = MEMLOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Above glommio's own 512 KiB minimum, below what one executor's rings
    // need once they are charged.
    let stderr = run_failing(Box::new(|| {
        drop_ipc_lock();
        set_memlock(600 * 1024)
    }));
    let text = error_message(&stderr);
    assert!(
        text.contains("locked-memory limit too low")
            && text.contains("RLIMIT_MEMLOCK=614400")
            && text.contains("os error 12"),
        "{text}"
    );
}

/// With 2 MiB of locked memory and no CAP_IPC_LOCK, one executor's rings
/// fit but its io buffers cannot be registered in every ring: glommio says
/// so with `log::warn!` (glommio/src/sys/uring.rs) and runs on.
#[test]
fn a_glommio_log_warning_reaches_the_log() {
    let _one = MEMLOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (node, stderr) = Node::try_start_prepared(
        &[("CORECAST_LOG_FORMAT", "json"), ("CORECAST_CORES", "1")],
        Box::new(|| {
            drop_ipc_lock();
            set_memlock(2 * 1024 * 1024)
        }),
    );
    let node = node.unwrap_or_else(|e| panic!("{e}:\n{}", stderr.lines().join("\n")));
    let line = parse(&stderr.wait_line("glommio's warning", WAIT, |l| {
        l.contains("registering buffers")
    }));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["target"], "glommio::sys::uring", "{line}");
    drop(node);
}

#[test]
fn mesh_peer_up_and_down_are_logged_once_each() {
    let (a_port, b_port) = (common::peer_port(), common::peer_port());
    let a_pub = format!("tcp://127.0.0.1:{a_port}");
    let b_pub = format!("tcp://127.0.0.1:{b_port}");
    let peers = format!("{a_pub},{b_pub}");
    let key = common::CLUSTER_MESH_KEY;
    let (a, stderr) = Node::start_capturing_stderr(&[
        ("CORECAST_LOG_FORMAT", "json"),
        ("CORECAST_NODE_ID", "node-a"),
        ("CORECAST_MESH_LISTEN", a_pub.as_str()),
        ("CORECAST_MESH_PEERS", peers.as_str()),
        ("CORECAST_MESH_KEY", key),
    ]);
    let b = Node::start_with(&[
        ("CORECAST_NODE_ID", "node-b"),
        ("CORECAST_MESH_LISTEN", b_pub.as_str()),
        ("CORECAST_MESH_PEERS", peers.as_str()),
        ("CORECAST_MESH_KEY", key),
    ]);
    let up = parse(&stderr.wait_line("mesh peer up", common::PEERS_WAIT, |l| {
        is_message(l, "mesh peer up")
    }));
    assert_eq!(up["peer"], b_pub.as_str(), "{up}");
    assert_eq!(up["level"], "INFO", "{up}");
    drop(b);
    let down = parse(
        &stderr.wait_line("mesh peer down", common::PEERS_WAIT, |l| {
            is_message(l, "mesh peer down")
        }),
    );
    assert_eq!(down["peer"], b_pub.as_str(), "{down}");
    assert_eq!(down["level"], "WARN", "{down}");
    let lines = stderr.lines();
    let ups = lines
        .iter()
        .map(|l| parse(l))
        .filter(|v| message(v) == "mesh peer up" && v["peer"] == b_pub.as_str())
        .count();
    assert_eq!(ups, 1, "{}", lines.join("\n"));
    assert!(
        !lines.join("\n").contains(key),
        "the log shows the mesh key"
    );
    drop(a);
}
