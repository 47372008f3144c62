//! Deployment: the kernel-tuning scripts, the ansible roles and playbooks, the
//! systemd unit, the Prometheus rules and configuration and the Grafana
//! dashboard, each checked with the real tool, and the installed node checked
//! live: it answers `/healthz`, and a real Prometheus scraping it returns data
//! for every metric the dashboard and the alert rules use.
//!
//! How it works: the first test that needs it runs `ansible/site.yml` once
//! (connection local, no systemd, no sysctl) into a directory under
//! `CARGO_TARGET_TMPDIR`, for an inventory of two nodes (`node-a`, `node-b`,
//! each with its own install root and free loopback ports, meshed together)
//! and a monitoring host. Every other test reads what that run installed.
//! Tests that start processes hold a lock (the rendered ports are fixed) and
//! stop what they started by PID.
//!
//! Needs the Debian packages listed in `.ci/apt-packages-deploy.txt`
//! (ansible, ansible-lint, prometheus, systemd, shellcheck, nftables). A
//! missing tool fails the test that needs it, except `systemd-analyze`, which
//! is skipped with a message where the command does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const JWT_SECRET: &str = "deploy-test-secret-0123456789abcdef0123456789";
const API_KEY: &str = "deploy-test-api-key-0123456789";
const NODES: [&str; 2] = ["node-a", "node-b"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ansible_dir() -> PathBuf {
    repo().join("ansible")
}

fn kernel_dir() -> PathBuf {
    repo().join("kernel-tuning")
}

/// Runs a command to completion and returns its output, failing the test
/// with a clear message when the program cannot be started.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (see .ci/apt-packages-deploy.txt)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and asserts exit status 0, showing its output otherwise.
fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `n` distinct loopback ports that were free a moment ago: all are bound at
/// once (port 0), then released together.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

// ---------------------------------------------------------------------------
// The installation made by site.yml, shared by the tests
// ---------------------------------------------------------------------------

struct NodePorts {
    ws: u16,
    http: u16,
    mesh: u16,
}

struct Deployment {
    dir: PathBuf,
    inventory: PathBuf,
    nodes: BTreeMap<&'static str, NodePorts>,
    /// Output of the first site.yml run.
    first_run: String,
}

impl Deployment {
    fn root(&self, host: &str) -> PathBuf {
        self.dir.join(format!("root-{host}"))
    }

    fn binary(&self, host: &str) -> PathBuf {
        self.root(host).join("usr/local/bin/corecast")
    }

    fn config(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/corecast/corecast.toml")
    }

    fn unit(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/systemd/system/corecast.service")
    }

    fn mesh_firewall(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/nftables.d/corecast-mesh.nft")
    }

    fn prometheus_config(&self) -> PathBuf {
        self.root("mon").join("etc/prometheus/prometheus.yml")
    }

    fn http(&self, host: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[host].http))
    }

    fn ws(&self, host: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[host].ws))
    }
}

/// This process's scratch directory under target/tmp (`deploy-<pid>`);
/// directories left by earlier test processes that no longer run are removed.
fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("deploy-")
                    && pid.bytes().all(|b| b.is_ascii_digit())
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A fresh directory inside the process scratch directory.
fn scratch_sub(name: &str) -> PathBuf {
    let dir = process_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ansible_playbook(inventory: &Path, playbook: &str, dir: &Path) -> Output {
    ansible_playbook_args(inventory, playbook, dir, &[])
}

fn ansible_playbook_args(inventory: &Path, playbook: &str, dir: &Path, args: &[&str]) -> Output {
    let tmp = dir.join("ansible-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    run(Command::new("ansible-playbook")
        .current_dir(ansible_dir())
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_REMOTE_TEMP", &tmp)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .arg("-i")
        .arg(inventory)
        .args(args)
        .arg(playbook))
}

/// Runs site.yml once for the whole test process.
fn deployment() -> &'static Deployment {
    static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| {
        let dir = scratch_sub("site");
        let ports = free_ports(3 * NODES.len());
        let nodes: BTreeMap<&'static str, NodePorts> = NODES
            .iter()
            .enumerate()
            .map(|(i, &host)| {
                let p = NodePorts {
                    ws: ports[3 * i],
                    http: ports[3 * i + 1],
                    mesh: ports[3 * i + 2],
                };
                (host, p)
            })
            .collect();

        let mut node_hosts = serde_json::Map::new();
        for (host, p) in &nodes {
            node_hosts.insert(
                host.to_string(),
                json!({
                    "corecast_root": dir.join(format!("root-{host}")),
                    "corecast_node_id": host,
                    "corecast_ws_port": p.ws,
                    "corecast_http_port": p.http,
                    "corecast_mesh_port": p.mesh,
                }),
            );
        }
        // Connection local, no privilege escalation, no systemd, no sysctl:
        // everything lands under the per-host install roots.
        let inventory_doc = json!({
            "all": {
                "vars": local_run_vars(
                    std::path::Path::new(env!("CARGO_BIN_EXE_corecast")),
                    json!({
                        "corecast_cores": 1,
                        "corecast_ws_address": "127.0.0.1",
                        "corecast_mesh_address": "127.0.0.1",
                        "corecast_drain_period_ms": 500,
                    }),
                ),
                "children": {
                    "corecast": { "hosts": node_hosts },
                    "monitoring": { "hosts": { "mon": {
                        "corecast_root": dir.join("root-mon"),
                        "monitoring_scrape_interval": "1s",
                        "monitoring_scrape_timeout": "1s",
                        "monitoring_evaluation_interval": "1s",
                    }}},
                },
            }
        });
        let inventory = dir.join("inventory.json");
        std::fs::write(
            &inventory,
            serde_json::to_string_pretty(&inventory_doc).unwrap(),
        )
        .unwrap();

        let out = ansible_playbook(&inventory, "site.yml", &dir);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "site.yml failed ({}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        );
        Deployment {
            dir,
            inventory,
            nodes,
            first_run: stdout,
        }
    })
}

/// `PLAY RECAP` counters per host: ok, changed, unreachable, failed.
fn recap(stdout: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut hosts = BTreeMap::new();
    let Some(tail) = stdout.split("PLAY RECAP").nth(1) else {
        return hosts;
    };
    for line in tail.lines() {
        let Some((host, counters)) = line.split_once(" : ") else {
            continue;
        };
        let counters = counters
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect();
        hosts.insert(host.trim().to_string(), counters);
    }
    hosts
}

// ---------------------------------------------------------------------------
// Processes started by a test, stopped by PID
// ---------------------------------------------------------------------------

/// A child process that is sent SIGTERM (then SIGKILL if it lingers) and
/// reaped when dropped, so a failing assertion never leaves it running.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Running {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Running {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Fails the test with the process log if it has exited.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Serializes the tests that start nodes: the rendered ports are fixed.
fn live_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_node(d: &Deployment, host: &str) -> Running {
    let mut cmd = Command::new(d.binary(host));
    cmd.arg("--config").arg(d.config(host));
    // Only the rendered file configures the node.
    for (key, _) in std::env::vars() {
        if key.starts_with("CORECAST_") {
            cmd.env_remove(key);
        }
    }
    Running::spawn(host, &mut cmd, &d.dir)
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client (one request per connection)
// ---------------------------------------------------------------------------

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = text(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let head_end = response.find("\r\n\r\n").map_or(response.len(), |i| i + 4);
    let (head, body) = response.split_at(head_end);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
}

/// Polls `check` every 100 ms until it returns Some, or panics after
/// `timeout` with the last failure description.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn wait_healthz(node: &mut Running, addr: SocketAddr) {
    wait_for(
        &format!("{} /healthz on {addr}", node.name),
        Duration::from_secs(20),
        || {
            node.assert_alive();
            match get(addr, "/healthz") {
                Ok((200, body)) if body.trim() == "ok" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
}

// ---------------------------------------------------------------------------
// Metric names used by the dashboard and the rules
// ---------------------------------------------------------------------------

/// Every `corecast_*` name in `s`.
fn metric_names(s: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(pos) = s[i..].find("corecast_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(s[start..end].to_string());
        }
        i = end;
    }
    names
}

fn dashboard() -> Value {
    let path = ansible_dir().join("roles/monitoring/files/corecast-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PromQL of every panel target and of the templating queries, with
/// Grafana's variables replaced by values Prometheus accepts.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard(), &mut exprs);
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect()
}

/// The metric names the dashboard queries (targets and the node variable).
fn dashboard_metrics() -> BTreeSet<String> {
    let d = dashboard();
    let mut names = BTreeSet::new();
    for e in dashboard_exprs() {
        names.extend(metric_names(&e));
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            names.extend(metric_names(q));
        }
    }
    names
}

fn rules_file() -> PathBuf {
    ansible_dir().join("roles/monitoring/files/corecast-alerts.yml")
}

/// The metric names in the alert rules (comments aside).
fn rule_metrics() -> BTreeSet<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect()
}

/// The metric names docs/contract.md fixes, with `_bucket`, `_sum`, `_count`
/// for each histogram.
fn contract_metrics() -> BTreeSet<String> {
    let contract = std::fs::read_to_string(repo().join("docs/contract.md")).unwrap();
    let section = contract
        .split("## Metric names")
        .nth(1)
        .expect("docs/contract.md has a '## Metric names' section");
    let mut names = metric_names(section);
    for name in names.clone() {
        if let Some(base) = name.strip_suffix("_bucket") {
            names.insert(format!("{base}_sum"));
            names.insert(format!("{base}_count"));
        }
    }
    names
}

// ---------------------------------------------------------------------------
// kernel-tuning/
// ---------------------------------------------------------------------------

/// Inventory vars of a test run of the playbooks plus `extra`: connection
/// local, no privilege escalation, no systemd, no sysctl, no firewall
/// applied: everything lands under the per-host install roots.
fn local_run_vars(binary: &std::path::Path, extra: serde_json::Value) -> serde_json::Value {
    let mut vars = json!({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "ansible_become": false,
        "corecast_manage_service": false,
        "kernel_tuning_apply": false,
        "corecast_firewall_apply": false,
        "corecast_binary_src": binary,
        "corecast_jwt_secret": JWT_SECRET,
        "corecast_api_keys": [API_KEY],
    });
    if let (Some(vars), Some(extra)) = (vars.as_object_mut(), extra.as_object()) {
        vars.extend(extra.clone());
    }
    vars
}

#[test]
fn kernel_tuning_scripts_are_shellcheck_clean() {
    let dir = kernel_dir();
    run_ok(
        Command::new("shellcheck")
            .arg(dir.join("apply.sh"))
            .arg(dir.join("check.sh")),
    );
}

/// The sysctl keys of a sysctl.d file, in order, with their values.
fn sysctl_entries(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[test]
fn kernel_tuning_covers_every_knob() {
    let keys: Vec<String> = sysctl_entries(&kernel_dir().join("90-corecast.conf"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for knob in [
        "fs.file-max",
        "fs.nr_open",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.netdev_max_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    ] {
        assert!(keys.iter().any(|k| k == knob), "{knob} missing");
    }
    // nr_open bounds every RLIMIT_NOFILE: it must come before anything that
    // relies on it and exceed the unit's LimitNOFILE.
    assert_eq!(keys[0], "fs.nr_open");
    let readme = std::fs::read_to_string(kernel_dir().join("README.md")).unwrap();
    for knob in &keys {
        assert!(
            readme.contains(knob.as_str()),
            "README does not explain {knob}"
        );
    }
    assert!(
        readme.contains("bench/scripts/idle-memory.sh 15000"),
        "the corecast-per-connection figure must name the command that measured it"
    );
}

#[test]
fn kernel_tuning_check_reports_every_knob() {
    let out = run(&mut Command::new(kernel_dir().join("check.sh")));
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "check.sh: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    for (key, recommended) in sysctl_entries(&kernel_dir().join("90-corecast.conf")) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("check.sh prints no line for {key}:\n{stdout}"));
        assert!(line.contains(&recommended), "{line}");
        assert!(line.ends_with(" ok") || line.ends_with(" SHORT"), "{line}");
    }
    let short = stdout.lines().any(|l| l.ends_with(" SHORT"));
    assert_eq!(
        code == Some(1),
        short,
        "exit status must say whether a knob is short:\n{stdout}"
    );
}

#[test]
fn kernel_tuning_apply_is_idempotent() {
    let dir = scratch_sub("apply");
    let apply = || {
        let out = run_ok(
            Command::new(kernel_dir().join("apply.sh"))
                .arg("--no-reload")
                .env("SYSCTL_DIR", dir.join("sysctl.d"))
                .env("LIMITS_DIR", dir.join("limits.d")),
        );
        text(&out.stdout)
    };
    let first = apply();
    assert_eq!(first.matches("installed: ").count(), 2, "{first}");
    let second = apply();
    assert_eq!(second.matches("unchanged: ").count(), 2, "{second}");
    assert!(!second.contains("installed: "), "{second}");
    assert_eq!(
        std::fs::read(dir.join("sysctl.d/90-corecast.conf")).unwrap(),
        std::fs::read(kernel_dir().join("90-corecast.conf")).unwrap()
    );
}

// ---------------------------------------------------------------------------
// ansible/: lint and syntax
// ---------------------------------------------------------------------------

#[test]
fn ansible_lint_is_clean() {
    // ansible/.ansible-lint selects the production profile.
    let out = run(Command::new("ansible-lint")
        .current_dir(ansible_dir())
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("NO_COLOR", "1"));
    assert!(
        out.status.success(),
        "ansible-lint failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn every_playbook_passes_syntax_check() {
    let mut playbooks: Vec<PathBuf> = std::fs::read_dir(ansible_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    playbooks.sort();
    let names: Vec<_> = playbooks
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"site.yml".into()) && names.contains(&"rolling-restart.yml".into()),
        "{names:?}"
    );
    for playbook in &playbooks {
        run_ok(
            Command::new("ansible-playbook")
                .current_dir(ansible_dir())
                .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
                .arg("--syntax-check")
                .arg("-i")
                .arg("inventory/example/hosts.yml")
                .arg(playbook),
        );
    }
}

// ---------------------------------------------------------------------------
// ansible/: a real site.yml run into a temporary root
// ---------------------------------------------------------------------------

#[test]
fn site_installs_binary_config_unit_and_monitoring() {
    let d = deployment();
    let hosts = recap(&d.first_run);
    assert_eq!(
        hosts.keys().collect::<Vec<_>>(),
        ["mon", "node-a", "node-b"],
        "{}",
        d.first_run
    );
    for (host, counters) in &hosts {
        assert_eq!(counters["failed"], 0, "{host}: {}", d.first_run);
        assert!(
            counters["changed"] > 0,
            "{host} changed nothing on a fresh root"
        );
    }

    for host in NODES {
        assert_eq!(
            std::fs::read(d.binary(host)).unwrap(),
            std::fs::read(env!("CARGO_BIN_EXE_corecast")).unwrap(),
            "{host}: installed binary differs from the built one"
        );
        // The sysctl and limits files are the kernel-tuning/ ones.
        let root = d.root(host);
        assert_eq!(
            std::fs::read(root.join("etc/sysctl.d/90-corecast.conf")).unwrap(),
            std::fs::read(kernel_dir().join("90-corecast.conf")).unwrap()
        );
        assert_eq!(
            std::fs::read(root.join("etc/security/limits.d/90-corecast.conf")).unwrap(),
            std::fs::read(kernel_dir().join("90-corecast-limits.conf")).unwrap()
        );

        let config = std::fs::read_to_string(d.config(host)).unwrap();
        let p = &d.nodes[host];
        for expected in [
            format!("listen = \"127.0.0.1:{}\"", p.ws),
            format!("listen = \"127.0.0.1:{}\"", p.http),
            format!("node_id = \"{host}\""),
            format!("mesh_listen = \"tcp://127.0.0.1:{}\"", p.mesh),
            format!("jwt_secret = \"{JWT_SECRET}\""),
            format!("api_keys = [\"{API_KEY}\"]"),
        ] {
            assert!(
                config.contains(&expected),
                "{host}: no {expected:?} in\n{config}"
            );
        }
        // Every node lists every node's PUB address.
        for peer in NODES {
            let addr = format!("\"tcp://127.0.0.1:{}\"", d.nodes[peer].mesh);
            assert!(
                config.contains(&addr),
                "{host}: peer {peer} missing:\n{config}"
            );
        }
        // The secrets file is not world-readable.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.config(host))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{host}: config mode {mode:o}");

        let unit = std::fs::read_to_string(d.unit(host)).unwrap();
        for expected in [
            "ExecStart=/usr/local/bin/corecast --config /etc/corecast/corecast.toml",
            "LimitNOFILE=1200000",
            "LimitMEMLOCK=",
            "KillSignal=SIGTERM",
            "NoNewPrivileges=yes",
        ] {
            assert!(
                unit.contains(expected),
                "{host}: unit lacks {expected}:\n{unit}"
            );
        }
    }

    let mon = d.root("mon");
    assert_eq!(
        std::fs::read(mon.join("etc/prometheus/rules/corecast-alerts.yml")).unwrap(),
        std::fs::read(rules_file()).unwrap()
    );
    let prometheus = std::fs::read_to_string(d.prometheus_config()).unwrap();
    for host in NODES {
        assert!(
            prometheus.contains(&format!("\"127.0.0.1:{}\"", d.nodes[host].http)),
            "scrape target of {host} missing:\n{prometheus}"
        );
    }
    assert!(
        mon.join("var/lib/grafana/dashboards/corecast/corecast.json")
            .is_file()
    );
}

// ---------------------------------------------------------------------------
// ansible/: the mesh port firewall (nftables)
// ---------------------------------------------------------------------------

/// `nft -c -f file`: parses and evaluates the ruleset without applying it.
/// nft needs CAP_NET_ADMIN even for -c (it reads the kernel's cache): when
/// not root, it runs inside a new user and network namespace (`unshare
/// -rn`), which touches nothing of this machine either. Returns false (and
/// says why) when neither can run here; a syntax error always fails.
fn nft_check(file: &Path) -> bool {
    let direct = run(Command::new("nft").arg("-c").arg("-f").arg(file));
    if direct.status.success() {
        return true;
    }
    let stderr = text(&direct.stderr);
    if !stderr.contains("Operation not permitted") {
        panic!("nft -c -f {}:\n{stderr}", file.display());
    }
    if command_exists("unshare") {
        let ns = run(Command::new("unshare")
            .args(["-rn", "nft", "-c", "-f"])
            .arg(file));
        let ns_err = text(&ns.stderr);
        if ns.status.success() {
            return true;
        }
        if !ns_err.contains("Operation not permitted") && !ns_err.contains("unshare failed") {
            panic!("unshare -rn nft -c -f {}:\n{ns_err}", file.display());
        }
        eprintln!("nft -c cannot run here ({stderr}; unshare: {ns_err}): content checked only");
    } else {
        eprintln!("nft -c cannot run here ({stderr}): content checked only");
    }
    false
}

/// The elements of the named set in a rendered table file.
fn nft_set_elements(table: &str, set: &str) -> BTreeSet<String> {
    let body = table
        .split(&format!("set {set} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("no set {set} in\n{table}"));
    let body = &body[..body.find('}').unwrap()];
    match body.split("elements = {").nth(1) {
        Some(elements) => elements
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        None => BTreeSet::new(),
    }
}

/// What every rendered table must say about the mesh port.
fn assert_mesh_rules(host: &str, table: &str, port: u16) {
    for expected in [
        "delete table inet corecast_mesh".to_string(),
        "table inet corecast_mesh {".to_string(),
        "type filter hook input priority filter - 10; policy accept;".to_string(),
        format!("iif \"lo\" tcp dport {port} accept"),
        format!("ip saddr @peers4 tcp dport {port} accept"),
        format!("ip6 saddr @peers6 tcp dport {port} accept"),
        format!("tcp dport {port} drop"),
    ] {
        assert!(
            table.contains(&expected),
            "{host}: mesh firewall lacks {expected:?}:\n{table}"
        );
    }
    // The drop comes after every accept, and nothing else is dropped.
    let rules: Vec<&str> = table
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(" accept") || l.ends_with(" drop"))
        .collect();
    assert_eq!(rules.len(), 4, "{table}");
    assert_eq!(rules[3], format!("tcp dport {port} drop"), "{table}");
    assert!(!table.contains("flush ruleset"), "{table}");
}

#[test]
fn site_firewalls_the_mesh_port_of_each_node() {
    let d = deployment();
    for host in NODES {
        let path = d.mesh_firewall(host);
        let table = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{host}: {}: {e}", path.display()));
        assert_mesh_rules(host, &table, d.nodes[host].mesh);
        // Every node's mesh address (all 127.0.0.1 here) is allowed.
        assert_eq!(
            nft_set_elements(&table, "peers4"),
            BTreeSet::from(["127.0.0.1".to_string()]),
            "{host}:\n{table}"
        );
        assert!(nft_set_elements(&table, "peers6").is_empty(), "{table}");
        nft_check(&path);
        // The boot-time unit loads that file.
        let unit = std::fs::read_to_string(
            d.root(host)
                .join("etc/systemd/system/corecast-mesh-firewall.service"),
        )
        .unwrap();
        for expected in [
            "ExecStart=/usr/sbin/nft -f /etc/nftables.d/corecast-mesh.nft",
            "Before=network-pre.target corecast.service",
            "After=local-fs.target nftables.service",
            "WantedBy=multi-user.target",
        ] {
            assert!(
                unit.contains(expected),
                "{host}: unit lacks {expected}:\n{unit}"
            );
        }
    }
}

/// Distinct peer addresses (IPv4 and IPv6), an extra allowed
/// CIDR and a stand-alone node: site.yml limited to two hosts, so that the
/// others are only inventory entries (their addresses need not exist here).
#[test]
fn mesh_firewall_lists_every_peer_address() {
    let dir = scratch_sub("firewall-peers");
    // A small stand-in binary: this run checks rendered files only.
    let binary = dir.join("corecast-stand-in");
    std::fs::write(&binary, "#!/bin/sh\nexit 0\n").unwrap();
    let host = |addr: &str, port: u16| {
        let name = format!("root-{}", addr.replace([':', '[', ']', '.'], "_"));
        json!({
            "corecast_root": dir.join(name),
            "corecast_mesh_address": addr,
            "corecast_mesh_port": port,
        })
    };
    let mut standalone = host("10.9.0.4", 7400);
    standalone["corecast_mesh_enabled"] = json!(false);
    let inventory_doc = json!({
        "all": {
            "vars": local_run_vars(
                &binary,
                json!({ "corecast_mesh_firewall_allow": ["192.0.2.0/24"] }),
            ),
            "children": {
                "corecast": { "hosts": {
                    "cc-1": host("10.9.0.1", 7401),
                    "cc-2": host("fd00:cc::2", 7402),
                    "cc-3": host("fd00:cc::3", 7403),
                    "cc-4": standalone,
                }},
                "monitoring": { "hosts": {} },
            },
        }
    });
    let inventory = dir.join("inventory.json");
    std::fs::write(&inventory, inventory_doc.to_string()).unwrap();
    let out = ansible_playbook_args(&inventory, "site.yml", &dir, &["--limit", "cc-1,cc-4"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "site.yml failed:\n{stdout}\n{}",
        text(&out.stderr)
    );

    let path = dir.join("root-10_9_0_1/etc/nftables.d/corecast-mesh.nft");
    let table = std::fs::read_to_string(&path).unwrap();
    assert_mesh_rules("cc-1", &table, 7401);
    assert_eq!(
        nft_set_elements(&table, "peers4"),
        BTreeSet::from(["10.9.0.1", "10.9.0.4", "192.0.2.0/24"].map(String::from)),
        "{table}"
    );
    assert_eq!(
        nft_set_elements(&table, "peers6"),
        BTreeSet::from(["fd00:cc::2", "fd00:cc::3"].map(String::from)),
        "{table}"
    );
    // The config lists the same peers.
    let config =
        std::fs::read_to_string(dir.join("root-10_9_0_1/etc/corecast/corecast.toml")).unwrap();
    for peer in [
        "tcp://10.9.0.1:7401",
        "tcp://[fd00:cc::2]:7402",
        "tcp://[fd00:cc::3]:7403",
        "tcp://10.9.0.4:7400",
    ] {
        assert!(config.contains(peer), "{peer} missing:\n{config}");
    }
    nft_check(&path);

    // No mesh, no firewall file.
    assert!(
        !dir.join("root-10_9_0_4/etc/nftables.d/corecast-mesh.nft")
            .exists()
    );
    assert!(
        dir.join("root-10_9_0_4/etc/corecast/corecast.toml")
            .exists()
    );
}

#[test]
fn site_second_run_changes_nothing() {
    let d = deployment();
    let out = ansible_playbook(&d.inventory, "site.yml", &d.dir);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "second site.yml run failed:\n{stdout}"
    );
    let hosts = recap(&stdout);
    assert_eq!(hosts.len(), 3, "{stdout}");
    for (host, counters) in &hosts {
        assert_eq!(
            counters["changed"], 0,
            "{host} changed on the second run:\n{stdout}"
        );
        assert_eq!(counters["failed"], 0, "{host}:\n{stdout}");
    }
}

#[test]
fn site_refuses_missing_secrets() {
    let d = deployment();
    let dir = scratch_sub("no-secrets");
    let inventory = dir.join("inventory.json");
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.inventory).unwrap()).unwrap();
    let vars = doc["all"]["vars"].as_object_mut().unwrap();
    vars.insert("corecast_jwt_secret".into(), json!(""));
    // Another root: this run must not touch the shared installation.
    for host in NODES {
        doc["all"]["children"]["corecast"]["hosts"][host]["corecast_root"] = json!(dir.join(host));
    }
    doc["all"]["children"]["monitoring"]["hosts"]["mon"]["corecast_root"] = json!(dir.join("mon"));
    std::fs::write(&inventory, doc.to_string()).unwrap();
    let out = ansible_playbook(&inventory, "site.yml", &dir);
    let stdout = text(&out.stdout);
    assert!(
        !out.status.success(),
        "site.yml accepted an empty JWT secret:\n{stdout}"
    );
    assert!(stdout.contains("corecast_jwt_secret"), "{stdout}");
    assert!(!dir.join("node-a/etc/corecast/corecast.toml").exists());
}

#[test]
fn systemd_unit_verifies() {
    if !command_exists("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let d = deployment();
    // systemd-analyze --root needs the unit, its ExecStart binary and the
    // system's own units (sysinit.target, ...) inside the root.
    let root = scratch_sub("systemd-root");
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    std::fs::copy(
        d.unit("node-a"),
        root.join("etc/systemd/system/corecast.service"),
    )
    .unwrap();
    std::fs::copy(d.binary("node-a"), root.join("usr/local/bin/corecast")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(root.join("usr/lib/systemd/")),
    );

    let out = run_ok(
        Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .args(["verify", "/etc/systemd/system/corecast.service"]),
    );
    // verify exits 0 on unknown keys and bad values too: they are warnings
    // naming the unit file.
    let stderr = text(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("corecast.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");

    // The hardening keeps the exposure score at or below 2.0 ("OK").
    run_ok(
        Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .args([
                "security",
                "--offline=true",
                "--threshold=20",
                "/etc/systemd/system/corecast.service",
            ]),
    );
}

// ---------------------------------------------------------------------------
// Prometheus rules and configuration, Grafana dashboard
// ---------------------------------------------------------------------------

#[test]
fn promtool_accepts_rules_and_rendered_config() {
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(rules_file()),
    );
    let d = deployment();
    let out = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(d.prometheus_config()),
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 rule files found"), "{stdout}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(ansible_dir().join("roles/monitoring/files/corecast-alerts.test.yml")),
    );
}

#[test]
fn dashboard_and_rules_use_only_contract_metrics() {
    let contract = contract_metrics();
    let dashboard = dashboard_metrics();
    let rules = rule_metrics();
    for name in dashboard.iter().chain(&rules) {
        assert!(
            contract.contains(name),
            "{name} is not a metric of docs/contract.md"
        );
    }
    // What the dashboard must show (issue 6).
    for needed in [
        "corecast_connections_active",
        "corecast_users_active",
        "corecast_pushes_total",
        "corecast_deliveries_total",
        "corecast_disconnects_total",
        "corecast_mesh_peer_up",
        "corecast_mesh_drops_total",
        "corecast_push_latency_seconds_bucket",
    ] {
        assert!(dashboard.contains(needed), "dashboard lacks {needed}");
    }
    let exprs = dashboard_exprs().join("\n");
    assert!(exprs.contains("reason=\"slow_consumer\""));
    assert!(exprs.contains("histogram_quantile(0.5,"));
    assert!(exprs.contains("histogram_quantile(0.99,"));
    // What the rules must cover.
    let text = std::fs::read_to_string(rules_file()).unwrap();
    for alert in [
        "CorecastNodeDown",
        "CorecastMeshPeerLost",
        "CorecastSlowConsumerDrops",
        "CorecastPushLatencyHigh",
        "CorecastConnectionsNearLimit",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}")),
            "rule {alert} missing"
        );
    }
    assert!(text.contains("up{job=\"corecast\"} == 0"));
    assert!(text.contains("corecast_connections_max"));
}

// ---------------------------------------------------------------------------
// The installed node, live
// ---------------------------------------------------------------------------

#[test]
fn installed_node_answers_healthz() {
    let d = deployment();
    let _lock = live_lock();
    let mut node = start_node(d, "node-a");
    wait_healthz(&mut node, d.http("node-a"));
    let (status, body) = get(d.http("node-a"), "/readyz").unwrap();
    assert_eq!(status, 200, "/readyz: {body}");
}

/// Mints a client token with the secret of node-a's rendered configuration.
fn token(d: &Deployment, uid: &str, rooms: &str) -> String {
    let mut cmd = Command::new(d.binary("node-a"));
    cmd.arg("token")
        .arg("--config")
        .arg(d.config("node-a"))
        .args(["--uid", uid, "--rooms", rooms, "--ttl", "1h"]);
    for (key, _) in std::env::vars() {
        if key.starts_with("CORECAST_") {
            cmd.env_remove(key);
        }
    }
    let out = run_ok(&mut cmd);
    let t = text(&out.stdout).trim().to_string();
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t:?}");
    t
}

type Client = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn ws_connect(addr: SocketAddr, token: &str) -> Client {
    let (client, response) = tungstenite::connect(format!("ws://{addr}/ws?token={token}"))
        .unwrap_or_else(|e| panic!("websocket to {addr}: {e}"));
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = client.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    client
}

/// Reads frames until a push arrives; returns its JSON.
fn next_push(client: &mut Client) -> Value {
    loop {
        match client.read().expect("read a push") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Binary(b) => return json!({ "binary": b.len() }),
            _ => continue,
        }
    }
}

fn push(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    http_request(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"))
}

/// Makes every metric family of the contract move: handshakes (ok and
/// unauthorized), pushes of each kind accepted on node-a and delivered on
/// both nodes (so they cross the mesh), a push refused by a limit, client
/// disconnects.
fn drive_traffic(d: &Deployment) {
    let t = token(d, "alice", "lobby");
    let mut on_a = ws_connect(d.ws("node-a"), &t);
    let mut on_b = ws_connect(d.ws("node-b"), &t);
    // Subscriptions travel asynchronously: give the mesh a moment.
    std::thread::sleep(Duration::from_millis(500));

    let a = d.http("node-a");
    for (path, body) in [
        ("/v1/push/user/alice", json!({"data": "to alice"})),
        (
            "/v1/push/users",
            json!({"uids": ["alice", "bob"], "data": "to users"}),
        ),
        ("/v1/push/room/lobby", json!({"data": "to the lobby"})),
        ("/v1/push/broadcast", json!({"data": "to everyone"})),
    ] {
        let (status, answer) = push(a, path, body.to_string().as_bytes());
        assert_eq!(status, 202, "POST {path}: {answer}");
        for client in [&mut on_a, &mut on_b] {
            let got = next_push(client);
            assert_eq!(got["data"], body["data"], "{path}: {got}");
        }
    }

    // Limits and refusals.
    let too_big = format!("{{\"data\":\"{}\"}}", "x".repeat(70 * 1024));
    let (status, answer) = push(a, "/v1/push/broadcast", too_big.as_bytes());
    assert_eq!(status, 413, "oversized push: {answer}");
    let refused = tungstenite::connect(format!("ws://{}/ws?token=not-a-jwt", d.ws("node-a")));
    assert!(refused.is_err(), "a bad token was accepted");

    for mut client in [on_a, on_b] {
        let _ = client.close(None);
        let _ = client.flush();
        while client.read().is_ok() {}
    }
}

struct Prometheus {
    addr: SocketAddr,
}

impl Prometheus {
    fn query(&self, promql: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = get(self.addr, &path).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].clone())
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_dashboard_and_rule_metric() {
    let d = deployment();
    let _lock = live_lock();

    let mut nodes: Vec<Running> = NODES.iter().map(|h| start_node(d, h)).collect();
    for (node, host) in nodes.iter_mut().zip(NODES) {
        wait_healthz(node, d.http(host));
    }

    // The Prometheus of the Debian package, with the configuration and rules
    // the monitoring role rendered.
    let prom_port = free_ports(1)[0];
    let storage = scratch_sub("prometheus-data");
    let mut prometheus = Running::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", d.prometheus_config().display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--log.level=warn"),
        &d.dir,
    );
    let prom = Prometheus {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, prom_port)),
    };
    wait_for("prometheus /-/ready", Duration::from_secs(30), || {
        prometheus.assert_alive();
        match get(prom.addr, "/-/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Both nodes scraped successfully, under their node ids.
    wait_for("both targets up", Duration::from_secs(30), || {
        let up = prom.query("up{job=\"corecast\"} == 1")?;
        let instances: BTreeSet<String> = up
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["metric"]["instance"].as_str().unwrap_or("").to_string())
            .collect();
        if instances == NODES.iter().map(|s| s.to_string()).collect() {
            Ok(())
        } else {
            Err(format!(
                "up: {up}; node logs:\n{}\n{}",
                nodes[0].log(),
                nodes[1].log()
            ))
        }
    });

    drive_traffic(d);

    // Every name the dashboard and the rules use returns data.
    let mut wanted: BTreeSet<String> = dashboard_metrics();
    wanted.extend(rule_metrics());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut missing: BTreeSet<String> = wanted.clone();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|name| {
            !prom
                .query(name)
                .is_ok_and(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        });
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for node in &mut nodes {
        node.assert_alive();
    }
    assert!(
        missing.is_empty(),
        "no data in Prometheus for {missing:?} (of {} names used by the dashboard and rules)",
        wanted.len()
    );

    // The mesh links are up both ways.
    let peers = prom.query("corecast_mesh_peer_up == 1").unwrap();
    assert!(
        peers.as_array().unwrap().len() >= 2,
        "mesh peers up: {peers}"
    );

    // Every dashboard query is valid PromQL.
    for expr in dashboard_exprs() {
        prom.query(&expr)
            .unwrap_or_else(|e| panic!("dashboard query {expr:?}: {e}"));
    }

    // Every alert rule evaluates without error.
    wait_for("alert rules evaluated", Duration::from_secs(20), || {
        let (_, body) = get(prom.addr, "/api/v1/rules").map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        if rules.is_empty() {
            return Err(format!("no rules loaded: {body}"));
        }
        match rules.iter().find(|r| r["health"] != "ok") {
            None => Ok(()),
            Some(r) => Err(format!(
                "{} health {}: {}",
                r["name"], r["health"], r["lastError"]
            )),
        }
    });
    prometheus.assert_alive();
}
