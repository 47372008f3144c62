//! The parent's side of the worker processes: spawns them (the same binary re-executed with
//! the hidden `worker` subcommand), writes commands to their stdin and folds the events read
//! from their stdout into one [`FleetState`] the scenarios wait on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as ProcessCommand};
use tokio::time::Instant;

use crate::error::BenchError;
use crate::limits::{POLL_INTERVAL_MS, PROGRESS_INTERVAL_MS};
use crate::proto::{Command, ConnectReport, Event, PhaseReport, WorkerSpec};

/// Grace period for workers to exit after `Close` before they are killed.
const WORKER_EXIT_GRACE_MS: u64 = 5_000;

/// Broadcast completion of one seq, folded over workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqCompletion {
    pub workers: usize,
    pub deliveries: u64,
    pub last_us: u64,
}

/// Latest news from every worker.
#[derive(Debug, Default)]
pub struct FleetState {
    pub progress: Vec<(u64, u64)>,
    pub connected: Vec<Option<ConnectReport>>,
    pub phase_open: Vec<Option<u64>>,
    pub stats: Vec<(u64, u64, u64)>,
    pub seq_done: HashMap<u64, SeqCompletion>,
    pub reports: Vec<Option<PhaseReport>>,
    pub exited: Vec<bool>,
    pub fatal: Option<String>,
}

impl FleetState {
    fn new(workers: usize) -> FleetState {
        FleetState {
            progress: vec![(0, 0); workers],
            connected: vec![None; workers],
            phase_open: vec![None; workers],
            stats: vec![(0, 0, 0); workers],
            reports: vec![None; workers],
            exited: vec![false; workers],
            ..Default::default()
        }
    }

    fn apply(&mut self, worker: usize, event: Event) {
        match event {
            Event::Progress { ok, failed } => self.progress[worker] = (ok, failed),
            Event::Connected(report) => {
                self.progress[worker] = (report.ok, report.failed);
                self.connected[worker] = Some(report);
            }
            Event::PhaseStarted { open } => self.phase_open[worker] = Some(open),
            Event::SeqDone {
                seq,
                deliveries,
                last_us,
            } => {
                let c = self.seq_done.entry(seq).or_default();
                c.workers += 1;
                c.deliveries += deliveries;
                c.last_us = c.last_us.max(last_us);
            }
            Event::Stats {
                unique,
                duplicates,
                open,
            } => self.stats[worker] = (unique, duplicates, open),
            Event::Report(report) => self.reports[worker] = Some(report),
            Event::Fatal { message } => self.fatal = Some(format!("worker {worker}: {message}")),
        }
    }

    /// Connections established so far, over all workers.
    pub fn connected_ok(&self) -> u64 {
        self.progress.iter().map(|p| p.0).sum()
    }

    /// Failed connection attempts so far, over all workers.
    pub fn connected_failed(&self) -> u64 {
        self.progress.iter().map(|p| p.1).sum()
    }

    /// Unique deliveries in the current phase, from the periodic stats.
    pub fn unique(&self) -> u64 {
        self.stats.iter().map(|s| s.0).sum()
    }
}

/// The running worker processes.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    pub state: Rc<RefCell<FleetState>>,
}

impl Fleet {
    /// Starts one worker per spec and hands each its spec.
    pub async fn spawn(specs: &[WorkerSpec]) -> Result<Fleet, BenchError> {
        let exe = std::env::current_exe()?;
        let state = Rc::new(RefCell::new(FleetState::new(specs.len())));
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for spec in specs {
            let mut child = ProcessCommand::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Worker {
                    index: spec.index,
                    reason: format!("spawn: {e}"),
                })?;
            let mut stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let mut line = serde_json::to_vec(spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            let (index, state) = (spec.index, state.clone());
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(event) => state.borrow_mut().apply(index, event),
                        Err(e) => {
                            state.borrow_mut().fatal =
                                Some(format!("worker {index}: bad event {e}: {line}"))
                        }
                    }
                }
                state.borrow_mut().exited[index] = true;
            });
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Fleet {
            children,
            stdins,
            state,
        })
    }

    /// This process and every worker process, for sampling the client's own CPU time.
    pub fn client_pids(&self) -> Vec<u32> {
        std::iter::once(std::process::id())
            .chain(self.children.iter().filter_map(Child::id))
            .collect()
    }

    /// Sends `command` to every worker.
    pub async fn broadcast(&mut self, command: &Command) -> Result<(), BenchError> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        for (index, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(&line)
                .await
                .map_err(|e| BenchError::Worker {
                    index,
                    reason: format!("stdin: {e}"),
                })?;
        }
        Ok(())
    }

    /// Waits until `done` holds, printing `progress` to stderr every PROGRESS_INTERVAL_MS.
    /// Fails on a worker error, a worker exit, or after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FleetState) -> bool,
        progress: impl Fn(&FleetState) -> String,
    ) -> Result<(), BenchError> {
        let start = Instant::now();
        let mut last_print = Instant::now();
        loop {
            {
                let s = self.state.borrow();
                if done(&s) {
                    return Ok(());
                }
                if let Some(message) = &s.fatal {
                    return Err(BenchError::Worker {
                        index: 0,
                        reason: message.clone(),
                    });
                }
                if let Some(index) = s.exited.iter().position(|e| *e) {
                    return Err(BenchError::Worker {
                        index,
                        reason: "exited early".into(),
                    });
                }
                if last_print.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
                    last_print = Instant::now();
                    eprintln!(
                        "[{:>6.1}s] {what}: {}",
                        start.elapsed().as_secs_f64(),
                        progress(&s)
                    );
                }
            }
            if start.elapsed() >= timeout {
                return Err(BenchError::Timeout {
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Asks every worker for its phase report and waits for all of them.
    pub async fn collect_reports(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<PhaseReport>, BenchError> {
        self.state
            .borrow_mut()
            .reports
            .iter_mut()
            .for_each(|r| *r = None);
        self.broadcast(&Command::Report).await?;
        self.wait_for(
            "reports",
            timeout,
            |s| s.reports.iter().all(Option::is_some),
            |s| {
                format!(
                    "{} of {} reports",
                    s.reports.iter().filter(|r| r.is_some()).count(),
                    s.reports.len()
                )
            },
        )
        .await?;
        Ok(self
            .state
            .borrow()
            .reports
            .iter()
            .flatten()
            .cloned()
            .collect())
    }

    /// Tells every worker to close its connections and exit; kills any still running after
    /// WORKER_EXIT_GRACE_MS (one deadline for all of them).
    pub async fn close(mut self) {
        let _ = self.broadcast(&Command::Close).await;
        drop(std::mem::take(&mut self.stdins));
        let deadline = Instant::now() + Duration::from_millis(WORKER_EXIT_GRACE_MS);
        for child in &mut self.children {
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
        for child in &mut self.children {
            let _ = child.wait().await;
        }
    }
}
