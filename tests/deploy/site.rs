//! ansible/: what a real site.yml run installs, a second run, refusals,
//! and the systemd unit.

use std::process::Command;

use serde_json::{Value, json};

use crate::metric_names::*;
use crate::support::*;

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
            format!("mesh_key = \"{MESH_KEY}\""),
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
        // The secrets file (JWT secret, API keys and mesh key) is not
        // world-readable.
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

/// Runs site.yml on the test inventory with `edit` applied to it, into a
/// fresh root (`name`) so that the shared installation is never touched, and
/// asserts that the run fails before any node config is written. Returns the
/// run's stdout.
fn site_refused(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let d = deployment();
    let dir = scratch_sub(name);
    let inventory = dir.join("inventory.json");
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&d.inventory).unwrap()).unwrap();
    for host in NODES {
        doc["all"]["children"]["corecast"]["hosts"][host]["corecast_root"] = json!(dir.join(host));
    }
    doc["all"]["children"]["monitoring"]["hosts"]["mon"]["corecast_root"] = json!(dir.join("mon"));
    edit(&mut doc);
    std::fs::write(&inventory, doc.to_string()).unwrap();
    let out = ansible_playbook(&inventory, "site.yml", &dir);
    let stdout = text(&out.stdout);
    assert!(
        !out.status.success(),
        "{name}: site.yml succeeded:\n{stdout}"
    );
    for host in NODES {
        assert!(
            !dir.join(host).join("etc/corecast/corecast.toml").exists(),
            "{name}: {host}'s config was written"
        );
    }
    stdout
}

#[test]
fn site_refuses_missing_secrets() {
    let stdout = site_refused("no-jwt-secret", |doc| {
        doc["all"]["vars"]["corecast_jwt_secret"] = json!("");
    });
    assert!(stdout.contains("corecast_jwt_secret"), "{stdout}");

    // No mesh key at all (the role default is empty).
    let stdout = site_refused("no-mesh-key", |doc| {
        doc["all"]["vars"]
            .as_object_mut()
            .unwrap()
            .remove("corecast_mesh_key");
    });
    assert!(
        stdout.contains("corecast_mesh_key (>= 32 bytes"),
        "{stdout}"
    );

    // 31 bytes: one short of what corecast accepts. The key is never printed.
    let short = &MESH_KEY[..31];
    let stdout = site_refused("short-mesh-key", |doc| {
        doc["all"]["vars"]["corecast_mesh_key"] = json!(short);
    });
    assert!(
        stdout.contains("corecast_mesh_key (>= 32 bytes"),
        "{stdout}"
    );
    assert!(!stdout.contains(short), "the key was printed:\n{stdout}");

    // Nodes of one cluster with different keys would never mesh.
    let stdout = site_refused("mesh-key-mismatch", |doc| {
        doc["all"]["children"]["corecast"]["hosts"]["node-b"]["corecast_mesh_key"] =
            json!(format!("{MESH_KEY}-other"));
    });
    assert!(stdout.contains("hold another key: node-b."), "{stdout}");
}

/// The role renders the config and has the installed binary check it
/// (`validate:` with `corecast config check`) before it replaces the old
/// file: a value the node would refuse fails the run at that task.
#[test]
fn site_refuses_a_config_that_fails_config_check() {
    let d = deployment();
    for host in NODES {
        let out = run(Command::new(d.binary(host))
            .args(["config", "check", "--config"])
            .arg(d.config(host)));
        assert!(out.status.success(), "{host}: {}", text(&out.stderr));
    }

    let name = "config-check-fails";
    let stdout = site_refused(name, |doc| {
        doc["all"]["vars"]["corecast_limits_extra"] = json!({
            "max_conections": 3,
            "send_queue_bytes_max": "lots",
            "client_messages_per_sec_max": 0,
        });
    });
    let task = "TASK [corecast : Render the node configuration]";
    let at = stdout
        .find(task)
        .unwrap_or_else(|| panic!("the run never reached {task:?}:\n{stdout}"));
    let rest = &stdout[at + task.len()..];
    let this_task = &rest[..rest.find("TASK [").unwrap_or(rest.len())];
    // The play runs one node at a time (serial) and stops at the first
    // failure: the node that reached the task failed there, after the
    // binary that checks the file was installed.
    let failed: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|host| this_task.contains(&format!("fatal: [{host}]")))
        .collect();
    assert!(
        !failed.is_empty(),
        "the render task did not fail:\n{stdout}"
    );
    let dir = process_dir().join(name);
    for host in failed {
        assert!(
            dir.join(host).join("usr/local/bin/corecast").exists(),
            "{host}: failed before the binary was installed:\n{stdout}"
        );
    }
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
