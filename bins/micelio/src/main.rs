//! The `micelio` binary: a peer-to-peer mesh node with an SSH partyline.
//!
//! `main` stays thin: parse the command line, load and validate the
//! configuration, initialise logging, open the data dir and the identity,
//! then run the node on a tokio runtime (one worker per core, or the
//! number `node.worker_threads` asks for; 1 is single-threaded) until SIGINT or
//! SIGTERM, or until one of its components fails. The node itself is
//! composed and supervised in [`node::run`].
//!
//! Exit status: 0 after a clean shutdown, 1 on a runtime failure (a
//! component that died included, after the node stopped in order), 2 on a
//! usage or configuration error (see `docs/operations.md`).

mod cli;
mod commands;
mod config;
mod demo;
mod logging;
mod node;
mod shutdown;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;

use crate::cli::{Cli, Command, ConfigCommand, GlobalArgs};
use crate::commands::Failure;

/// Exit status of a usage or configuration error.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.global),
        Command::Id => commands::id(&cli.global),
        Command::Config(ConfigCommand::Check) => commands::config_check(&cli.global),
        Command::Config(ConfigCommand::Example) => commands::config_example(),
        Command::Completions { shell } => commands::completions(shell),
        Command::Man => commands::man(),
        Command::Demo { nodes } => demo::run(nodes).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure),
    }
}

/// `micelio run`.
fn run(args: &GlobalArgs) -> Result<(), Failure> {
    let config = commands::load_config(args)?;
    logging::init(&config.logging)?;
    commands::open_data_dir(&config.node.data_dir)?;
    let identity = commands::open_identity(&config.node.data_dir)?;

    let runtime = build_runtime(config.node.worker_threads)?;
    let result = runtime.block_on(async {
        // Signals are handled from here on, so once the banner is out a
        // supervisor (or a test) may send SIGTERM.
        let signals = shutdown::listen_for_signals()?;
        commands::print_banner(&config, &identity)?;
        shutdown::supervise(
            |token| node::run(config, identity, token),
            signals,
            shutdown::GRACE_PERIOD,
        )
        .await
    });
    // Tasks the node failed to stop must not hold the process open.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(result?)
}

/// The runtime the node runs on: `worker_threads` 1 is a current-thread
/// runtime (the node's tasks share the main thread), 0 a multi-thread
/// runtime with one worker per core, any other number that many workers.
fn build_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if worker_threads > 1 {
            builder.worker_threads(worker_threads);
        }
        builder
    };
    builder
        .enable_all()
        .thread_name("micelio")
        .build()
        .context("cannot start the tokio runtime")
}

#[allow(clippy::print_stderr, reason = "reporting the failure is the purpose")]
fn report(failure: &Failure) -> ExitCode {
    match failure {
        Failure::Config(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Failure::Other(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[test]
    fn worker_threads_picks_the_runtime() {
        let single = build_runtime(1).unwrap();
        assert_eq!(
            single.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        let three = build_runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let per_core = build_runtime(0).unwrap();
        assert_eq!(
            per_core.metrics().num_workers(),
            std::thread::available_parallelism().map_or(1, usize::from)
        );
    }
}
