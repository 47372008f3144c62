//! ansible/: the mesh port firewall (nftables) of each node.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::*;

/// A mesh key of 16 two-byte characters: 32 bytes, the minimum.
const UTF8_MESH_KEY: &str = "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}";
const _: () = assert!(UTF8_MESH_KEY.len() == 32);

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
    // A stand-alone node needs no mesh key.
    standalone["corecast_mesh_key"] = json!("");
    let inventory_doc = json!({
        "all": {
            "vars": local_run_vars(
                &binary,
                json!({
                    "corecast_mesh_firewall_allow": ["192.0.2.0/24"],
                    "corecast_mesh_key": UTF8_MESH_KEY,
                }),
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
    // 16 characters, 32 bytes: enough for corecast, which counts bytes; TOML
    // takes it as UTF-8 (no \u escapes, whose surrogate pairs TOML refuses).
    assert!(
        config.contains(&format!("mesh_key = \"{UTF8_MESH_KEY}\"")),
        "{config}"
    );
    for peer in [
        "tcp://10.9.0.1:7401",
        "tcp://[fd00:cc::2]:7402",
        "tcp://[fd00:cc::3]:7403",
        "tcp://10.9.0.4:7400",
    ] {
        assert!(config.contains(peer), "{peer} missing:\n{config}");
    }
    nft_check(&path);

    // No mesh, no firewall file, no mesh key.
    assert!(
        !dir.join("root-10_9_0_4/etc/nftables.d/corecast-mesh.nft")
            .exists()
    );
    let standalone =
        std::fs::read_to_string(dir.join("root-10_9_0_4/etc/corecast/corecast.toml")).unwrap();
    assert!(standalone.contains("mesh_listen = \"\""), "{standalone}");
    assert!(!standalone.contains("mesh_key"), "{standalone}");
}
