//! corecast-bench: a load client for corecast (and, for comparison, nginx + nchan).
//!
//! Module map and data flow:
//! - [`cli`]: arguments. [`scenario`]: the parent's run of `idle` / `broadcast` / `unicast`.
//! - [`fleet`]: the parent spawns worker processes (this binary, hidden `worker` subcommand) and
//!   talks to them with JSON lines ([`proto`]) over their stdin/stdout.
//! - [`worker`]: a worker opens up to WORKER_CONNECTIONS_MAX connections ([`ws_proto`] for the
//!   protocol, [`token`] for JWTs, [`target`] for paths), then records deliveries: latency from
//!   the payload's intended send time, loss and duplicates from its seq.
//! - The parent pushes over [`http_client`], samples server RSS/CPU ([`server_stats`]), merges
//!   worker histograms ([`hist`]) and writes [`summary`], `.hgrm` files and an [`svg`] plot
//!   ([`output`]). [`report`] prints earlier runs side by side.
//! - [`source_addrs`]: the local addresses connections are bound to. [`merge`]: folds runs
//!   made at the same time (several client machines) into one, from their `.hlog` files.
//! - [`limits`]: every cap, named. [`error`]: error types. [`clock`]: unix microseconds.

mod cli;
mod clock;
mod error;
mod fleet;
mod hist;
mod http_client;
mod limits;
mod merge;
mod output;
mod proto;
mod report;
mod scenario;
mod server_stats;
mod source_addrs;
mod summary;
mod svg;
mod target;
mod token;
mod worker;
mod ws_proto;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::scenario::Scenario;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Worker => worker::run(),
        Cmd::Report { dirs } => report::table(&dirs).map(|t| print!("{t}")),
        Cmd::Merge { out, dirs } => merge::merge(&dirs, &out).map(|m| {
            print!("{}", merge::describe(&m, dirs.len()));
            eprintln!("wrote {}", out.display());
        }),
        Cmd::Idle(a) => scenario::run(Scenario::Idle(a)).map(|_| ()),
        Cmd::Broadcast(a) => scenario::run(Scenario::Broadcast(a)).map(|_| ()),
        Cmd::Unicast(a) => scenario::run(Scenario::Unicast(a)).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corecast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
