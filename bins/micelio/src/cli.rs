//! The command line: subcommands and the flags shared by all of them.
//!
//! Flags are global: `micelio --listen A run` and `micelio run --listen A`
//! are the same. Configuration flags are kept as plain strings and checked
//! with the rest of the configuration, so that a bad flag is reported
//! together with every other bad field, naming both the key and the flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::config::load::CONFIG_ENV;

/// A peer-to-peer mesh node with an SSH partyline.
#[derive(Debug, Parser)]
#[command(name = "micelio", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Flags accepted by every subcommand.
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// What to do; `run` when absent.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub(crate) enum Command {
    /// Start the node (the default).
    Run,
    /// Print the NodeId and the OpenSSH public key, creating the identity
    /// if the data dir has none.
    Id,
    /// Work with the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the manual page (roff) on stdout, e.g. `micelio man | man -l -`.
    Man,
    /// Start a local mesh of N nodes on 127.0.0.1 under a temporary
    /// directory and print how to ssh into each; Ctrl-C removes it all.
    Demo {
        /// How many nodes (1-20).
        #[arg(long, default_value_t = 3)]
        nodes: u8,
    },
}

/// The shells `micelio completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// `micelio config …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load and validate the effective configuration, print it as TOML, or
    /// print every error and exit with status 2.
    Check,
    /// Print the documented example configuration (every setting, its
    /// default and what it does).
    Example,
}

/// Flags shared by all subcommands; each overrides one configuration key.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct GlobalArgs {
    /// Configuration file (TOML). Default: ~/.micelio/config.toml if it
    /// exists.
    #[arg(long, global = true, value_name = "FILE", env = CONFIG_ENV)]
    pub(crate) config: Option<PathBuf>,
    /// Node name [node.name].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Data directory [node.data_dir].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<String>,
    /// SSH partyline address, IP:port [ssh.listen].
    #[arg(long, global = true, value_name = "ADDR")]
    pub(crate) ssh_listen: Option<String>,
    /// Peer address to listen on, IP:port; empty for outbound-only
    /// [network.listen].
    #[arg(long, global = true, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Bootstrap peer host:port; repeatable or comma-separated, replaces
    /// the configured list [network.bootstrap].
    #[arg(long, global = true, value_name = "ADDR", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<String>,
    /// Log level or tracing filter, e.g. "debug" or
    /// "info,micelio_transport=debug" [logging.level].
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
    /// Log format: text or json [logging.format].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Runtime threads: 0 = one per CPU core, 1 = single-threaded
    /// [node.worker_threads].
    #[arg(long, global = true, value_name = "N")]
    pub(crate) worker_threads: Option<String>,
}

impl GlobalArgs {
    /// The flags that override configuration keys.
    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            ssh_listen: self.ssh_listen.clone(),
            listen: self.listen.clone(),
            bootstrap: self.bootstrap.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            worker_threads: self.worker_threads.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["micelio", "--listen", "127.0.0.1:1", "run"]).unwrap();
        let after = Cli::try_parse_from(["micelio", "run", "--listen", "127.0.0.1:1"]).unwrap();
        let nested =
            Cli::try_parse_from(["micelio", "config", "check", "--listen", "127.0.0.1:1"]).unwrap();
        for cli in [&before, &after, &nested] {
            assert_eq!(cli.global.listen.as_deref(), Some("127.0.0.1:1"));
        }
        assert_eq!(before.command, Some(Command::Run));
        assert_eq!(nested.command, Some(Command::Config(ConfigCommand::Check)));
        let bare = Cli::try_parse_from(["micelio", "--name", "x"]).unwrap();
        assert_eq!(bare.command, None);
    }

    #[test]
    fn bootstrap_repeats_and_splits_on_commas() {
        let cli = Cli::try_parse_from([
            "micelio",
            "id",
            "--bootstrap",
            "a:1,b:2",
            "--bootstrap",
            "c:3",
        ])
        .unwrap();
        assert_eq!(cli.global.overrides().bootstrap, ["a:1", "b:2", "c:3"]);
    }
}
