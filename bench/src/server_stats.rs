//! Server process cost from /proc: resident memory (VmRSS) and CPU time (utime + stime) of
//! every `--server-pid`, sampled around each phase so a phase's cost is the difference.

use serde::{Deserialize, Serialize};

/// One reading of one server process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    pub pid: u32,
    pub rss_kib: u64,
    pub cpu_us: u64,
}

/// Readings of every server process at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub label: String,
    pub at_us: u64,
    pub procs: Vec<ProcSample>,
}

impl Sample {
    pub fn take(label: &str, pids: &[u32]) -> Sample {
        Sample {
            label: label.to_string(),
            at_us: crate::clock::unix_us(),
            procs: pids
                .iter()
                .map(|&pid| {
                    read_proc(pid).unwrap_or(ProcSample {
                        pid,
                        ..Default::default()
                    })
                })
                .collect(),
        }
    }

    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(|p| p.rss_kib).sum()
    }

    pub fn cpu_us(&self) -> u64 {
        self.procs.iter().map(|p| p.cpu_us).sum()
    }
}

/// Cost of a phase: the difference of two samples, summed over server processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseCost {
    pub phase: String,
    pub secs: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub cpu_us: u64,
    pub before: Sample,
    pub after: Sample,
}

impl PhaseCost {
    pub fn between(phase: &str, before: Sample, after: Sample) -> PhaseCost {
        PhaseCost {
            phase: phase.to_string(),
            secs: after.at_us.saturating_sub(before.at_us) as f64 / 1e6,
            rss_before_kib: before.rss_kib(),
            rss_after_kib: after.rss_kib(),
            cpu_us: after.cpu_us().saturating_sub(before.cpu_us()),
            before,
            after,
        }
    }
}

fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as u64)
        .unwrap_or(100)
}

/// Reads VmRSS and utime+stime of `pid`; `None` if the process is gone.
pub fn read_proc(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        pid,
        rss_kib: parse_vm_rss_kib(&status)?,
        cpu_us: parse_cpu_ticks(&stat)? * 1_000_000 / clock_ticks_per_sec(),
    })
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name in
/// field 2 may hold spaces, so count from the last ')').
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234)
        );
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
        let me = read_proc(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
    }
}
