//! ansible/: ansible-lint and syntax checks.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

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
