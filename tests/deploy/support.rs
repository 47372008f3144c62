//! What the deploy tests share: paths, command runners, the one site.yml
//! run (`deployment()`), processes stopped by PID, and the live-node lock.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

#[allow(unused_imports)]
use crate::{http::*, metric_names::*};

pub const JWT_SECRET: &str = "deploy-test-secret-0123456789abcdef0123456789";
pub const API_KEY: &str = "deploy-test-api-key-0123456789";
/// `[cluster] mesh_key` of the test deployment: 41 bytes, the two nodes mesh
/// over CURVE with it.
pub const MESH_KEY: &str = "deploy-test-mesh-key-0123456789abcdefghij";
pub const NODES: [&str; 2] = ["node-a", "node-b"];

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ansible_dir() -> PathBuf {
    repo().join("ansible")
}

pub fn kernel_dir() -> PathBuf {
    repo().join("kernel-tuning")
}

/// Runs a command to completion and returns its output, failing the test
/// with a clear message when the program cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (see .ci/apt-packages-deploy.txt)"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and asserts exit status 0, showing its output otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
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

pub fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `n` distinct loopback ports that were free a moment ago: all are bound at
/// once (port 0), then released together.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub struct NodePorts {
    pub ws: u16,
    pub http: u16,
    pub mesh: u16,
}

pub struct Deployment {
    pub dir: PathBuf,
    pub inventory: PathBuf,
    pub nodes: BTreeMap<&'static str, NodePorts>,
    /// Output of the first site.yml run.
    pub first_run: String,
}

impl Deployment {
    pub fn root(&self, host: &str) -> PathBuf {
        self.dir.join(format!("root-{host}"))
    }

    pub fn binary(&self, host: &str) -> PathBuf {
        self.root(host).join("usr/local/bin/corecast")
    }

    pub fn config(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/corecast/corecast.toml")
    }

    pub fn unit(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/systemd/system/corecast.service")
    }

    pub fn mesh_firewall(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/nftables.d/corecast-mesh.nft")
    }

    pub fn prometheus_config(&self) -> PathBuf {
        self.root("mon").join("etc/prometheus/prometheus.yml")
    }

    pub fn http(&self, host: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[host].http))
    }

    pub fn ws(&self, host: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[host].ws))
    }
}

/// This process's scratch directory under target/tmp (`deploy-<pid>`);
/// directories left by earlier test processes that no longer run are removed.
pub fn process_dir() -> &'static Path {
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
pub fn scratch_sub(name: &str) -> PathBuf {
    let dir = process_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn ansible_playbook(inventory: &Path, playbook: &str, dir: &Path) -> Output {
    ansible_playbook_args(inventory, playbook, dir, &[])
}

pub fn ansible_playbook_args(
    inventory: &Path,
    playbook: &str,
    dir: &Path,
    args: &[&str],
) -> Output {
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
pub fn deployment() -> &'static Deployment {
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
pub fn recap(stdout: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
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
pub struct Running {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Running {
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
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn log(&self) -> String {
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
pub fn live_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn start_node(d: &Deployment, host: &str) -> Running {
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

/// Inventory vars of a test run of the playbooks plus `extra`: connection
/// local, no privilege escalation, no systemd, no sysctl, no firewall
/// applied: everything lands under the per-host install roots.
pub fn local_run_vars(binary: &std::path::Path, extra: serde_json::Value) -> serde_json::Value {
    let mut vars = json!({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "ansible_become": false,
        "corecast_manage_service": false,
        "kernel_tuning_apply": false,
        "corecast_firewall_apply": false,
        "corecast_binary_src": binary,
        "corecast_jwt_secret": JWT_SECRET,
        "corecast_mesh_key": MESH_KEY,
        "corecast_api_keys": [API_KEY],
    });
    if let (Some(vars), Some(extra)) = (vars.as_object_mut(), extra.as_object()) {
        vars.extend(extra.clone());
    }
    vars
}
