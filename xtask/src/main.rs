//! `cargo xtask`: project chores that are code, not shell scripts.
//!
//! - `cargo xtask proto` regenerates `crates/micelio-wire/src/generated/` from
//!   `proto/micelio.proto` with a pure-Rust protobuf compiler (no `protoc`);
//! - `cargo xtask proto --check` fails when the committed code is stale;
//! - `cargo xtask mesh […]` benchmarks gossip over meshes of 10 to 100 nodes,
//!   in process (memory transport) or as real processes over TCP (see
//!   [`mesh`]);
//! - `cargo xtask latency […]` measures the partyline latency between two
//!   real `micelio` processes with the real OpenSSH client (see [`latency`]);
//! - `cargo xtask state […]` benchmarks the replicated state and desired
//!   state (see [`state`]);
//! - `cargo xtask plugins […]` benchmarks an external plugin beside an
//!   in-process one (see [`plugins`]).
//!
//! The tidy checks (layering, `//!` docs, fresh generated code) run as tests of
//! this crate, so `cargo test --workspace` enforces them.

mod codegen;
mod latency;
mod mesh;
mod plugins;
mod state;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("xtask: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["proto"] => codegen::write(&project_root()),
        ["mesh", rest @ ..] => mesh::run(&project_root(), rest),
        ["latency", rest @ ..] => latency::run(&project_root(), rest),
        ["state", rest @ ..] => state::run(&project_root(), rest),
        ["plugins", rest @ ..] => plugins::run(&project_root(), rest),
        ["proto", "--check"] => {
            if codegen::is_fresh(&project_root())? {
                Ok(())
            } else {
                bail!("generated protobuf code is stale: run `cargo xtask proto`")
            }
        }
        _ => bail!(
            "usage: cargo xtask <command>\n\ncommands:\n  proto [--check]  regenerate (or check) the protobuf code of micelio-wire\n  mesh [--help]    benchmark gossip over meshes (memory or tcp)\n  latency [--help] benchmark partyline latency between two nodes over ssh\n  state [--help]   benchmark the replicated state (latency, heal, catch-up, heartbeats, memory, desired state)\n  plugins [--help] benchmark plugins (command round trip, event rate; external beside in-process)"
        ),
    }
    .context("xtask failed")
}

/// The workspace root (the parent of this crate's directory).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
