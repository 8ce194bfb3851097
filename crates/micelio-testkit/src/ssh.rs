//! The real OpenSSH client for tests and benchmarks: an exec request to a
//! node on loopback with a throwaway key, no config file, no agent, no
//! host key checks (the node's key is new in every run).

use std::path::Path;
use std::process::{Command, Stdio};

/// `ssh` to `user@<addr>` (`host:port`) with the private key `key`,
/// running `command`; stdin is closed. `None` when `addr` has no port.
pub fn exec_command(key: &Path, addr: &str, user: &str, command: &str) -> Option<Command> {
    let (host, port) = addr.rsplit_once(':')?;
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
    ])
    .args(["-o", "LogLevel=ERROR", "-i"])
    .arg(key)
    .args(["-p", port])
    .arg(format!("{user}@{host}"))
    .arg(command)
    .stdin(Stdio::null());
    Some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_names_key_port_user_and_command() {
        let cmd = exec_command(Path::new("/k"), "127.0.0.1:2222", "op", "/who").unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.ends_with(&["-i", "/k", "-p", "2222", "op@127.0.0.1", "/who"].map(String::from)),
            "{args:?}"
        );
        assert!(exec_command(Path::new("/k"), "no-port", "op", "/who").is_none());
    }
}
