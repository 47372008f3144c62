//! kernel-tuning/: shellcheck, every knob covered, check and apply.

use std::path::Path;
use std::process::Command;

use crate::support::*;

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
