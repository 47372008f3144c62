//! Prometheus rules and configuration, and the Grafana dashboard.

use std::process::Command;

use crate::metric_names::*;
use crate::support::*;

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
        // Memory and CPU per node (issue 14).
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
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
