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
//! (ansible, ansible-lint, prometheus, systemd, shellcheck, nftables, and
//! libzmq5, which the installed binary links). A missing tool fails the test
//! that needs it, except `systemd-analyze`, which is skipped with a message
//! where the command does not exist.
mod ansible_lint;
mod firewall;
mod http;
mod kernel_tuning;
mod live;
mod metric_names;
mod monitoring;
mod site;
mod support;
