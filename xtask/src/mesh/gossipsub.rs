//! The comparison peer: libp2p gossipsub, a separate cargo project
//! (`bench/gossipsub`, its own workspace) run with the same mesh sizes,
//! message count, caps and seed, whose JSON lines join ours.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::{MeshArgs, Mode};

/// The project's manifest, relative to the workspace root, unless
/// `--gossipsub-manifest` names another.
pub(crate) const DEFAULT_MANIFEST: &str = "bench/gossipsub/Cargo.toml";

/// The modes the peer's CLI knows.
pub(crate) fn supports(mode: Mode) -> bool {
    matches!(mode, Mode::Broadcast | Mode::Throughput)
}

/// The arguments after `--` for one configuration.
pub(crate) fn peer_args(args: &MeshArgs, n: usize, mode: Mode) -> Vec<String> {
    vec![
        "--nodes".into(),
        n.to_string(),
        "--messages".into(),
        args.messages.to_string(),
        "--max-peers".into(),
        args.max_peers.to_string(),
        "--degree".into(),
        args.degree.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--mode".into(),
        mode.name().into(),
    ]
}

/// The JSON objects among `stdout`'s lines, each marked
/// `"impl":"gossipsub"` (and given `mode` and `transport` if it lacks
/// them).
pub(crate) fn rows(stdout: &str, mode: Mode) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|mut v| {
            let obj = v.as_object_mut()?;
            obj.insert("impl".into(), "gossipsub".into());
            obj.entry("mode").or_insert_with(|| mode.name().into());
            obj.entry("transport").or_insert_with(|| "memory".into());
            Some(v)
        })
        .collect()
}

/// Runs the peer for one configuration:
/// `cargo run --release --manifest-path <manifest> -- …`.
pub(crate) fn run(
    root: &Path,
    args: &MeshArgs,
    n: usize,
    mode: Mode,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let manifest = args
        .gossipsub_manifest
        .as_deref()
        .map_or_else(|| root.join(DEFAULT_MANIFEST), |m| root.join(m));
    if !manifest.is_file() {
        bail!("no gossipsub project at {}", manifest.display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .args(peer_args(args, n, mode))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own target directory (the project is another workspace):
        // ours would rebuild its dependencies for nothing.
        .env_remove("CARGO_TARGET_DIR");
    if args.json_only {
        cmd.stderr(Stdio::null());
    }
    let out = cmd.output().context("cannot run cargo for gossipsub")?;
    if !out.status.success() {
        bail!("gossipsub-bench failed ({})", out.status);
    }
    let rows = rows(&String::from_utf8_lossy(&out.stdout), mode);
    if rows.is_empty() {
        bail!("gossipsub-bench printed no JSON line");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_rows() {
        let a = MeshArgs::default();
        assert_eq!(
            peer_args(&a, 50, Mode::Throughput).join(" "),
            "--nodes 50 --messages 20 --max-peers 8 --degree 3 --seed 1 --mode throughput"
        );
        let r = rows(
            "compiling…\n{\"nodes\":50,\"p99_ms\":17.5}\nnot json\n[1]\n",
            Mode::Broadcast,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["impl"], "gossipsub");
        assert_eq!(r[0]["mode"], "broadcast");
        assert_eq!(r[0]["p99_ms"], 17.5);
        assert!(supports(Mode::Broadcast) && !supports(Mode::Churn));
    }
}
