//! What each subcommand does, in small steps that `main` strings together.
//!
//! Command output (the NodeId, the public key, the effective configuration)
//! goes to stdout; logs and errors go to stderr.

use std::io::{self, Write as _};
use std::path::Path;

use anyhow::Context as _;
use micelio_identity::{Identity, KeyFiles, Provenance};

use crate::cli::GlobalArgs;
use crate::config::{self, Config, ConfigError, Sources};

/// Why a command failed, which decides the exit status.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The configuration could not be loaded or is invalid (exit 2).
    Config(ConfigError),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// Loads the effective configuration for these flags, the process
/// environment and the config file.
///
/// # Errors
/// Every problem with the configuration.
pub(crate) fn load_config(args: &GlobalArgs) -> Result<Config, ConfigError> {
    config::load(&Sources::from_process(
        args.config.clone(),
        args.overrides(),
    ))
}

/// Creates the data dir (mode 0700) if it does not exist; warns if an
/// existing one is open to group or others.
///
/// # Errors
/// If it cannot be created or is not a directory.
pub(crate) fn open_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    data_dir = %dir.display(),
                    mode = %format_args!("{mode:03o}"),
                    "data dir is accessible by group or others; consider chmod 700"
                );
            }
            Ok(())
        }
        Ok(_) => anyhow::bail!("data dir {} is not a directory", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create data dir {}", dir.display()))?;
            tracing::info!(data_dir = %dir.display(), "created data dir");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot open data dir {}", dir.display())),
    }
}

/// Loads the node identity from the data dir, creating it on first run.
///
/// # Errors
/// An existing key that cannot be used (never replaced), or a failure to
/// write a new one.
pub(crate) fn open_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let files = KeyFiles::new(data_dir);
    let (identity, provenance) = files.load_or_create()?;
    if provenance == Provenance::Created {
        tracing::info!(
            key = %files.key_path().display(),
            node_id = %identity.node_id(),
            "created a new node identity"
        );
    }
    Ok(identity)
}

/// `micelio id`: prints the NodeId, then the OpenSSH public key line.
///
/// # Errors
/// A bad configuration, data dir or identity.
pub(crate) fn id(args: &GlobalArgs) -> Result<(), Failure> {
    let config = load_config(args)?;
    open_data_dir(&config.node.data_dir)?;
    let identity = open_identity(&config.node.data_dir)?;
    let line = identity.openssh_public_line();
    write_stdout(&format!("{}\n{}\n", identity.node_id(), line.trim_end()))?;
    Ok(())
}

/// `micelio config check`: prints the effective configuration as TOML.
///
/// # Errors
/// Every problem with the configuration.
pub(crate) fn config_check(args: &GlobalArgs) -> Result<(), Failure> {
    let config = load_config(args)?;
    write_stdout(&config.to_toml())?;
    Ok(())
}

/// The documented example configuration, as shipped in `docs/`.
pub(crate) const CONFIG_EXAMPLE: &str = include_str!("../../../docs/config.example.toml");

/// `micelio config example`: prints [`CONFIG_EXAMPLE`] (the config tests
/// check that it lists every key of the code, with its default).
pub(crate) fn config_example() -> Result<(), Failure> {
    write_stdout(CONFIG_EXAMPLE)?;
    Ok(())
}

/// `micelio completions <shell>`: a completion script from the clap
/// definition.
pub(crate) fn completions(shell: crate::cli::Shell) -> Result<(), Failure> {
    use clap::CommandFactory as _;
    let mut cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    let shell = match shell {
        crate::cli::Shell::Bash => clap_complete::Shell::Bash,
        crate::cli::Shell::Zsh => clap_complete::Shell::Zsh,
        crate::cli::Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "micelio", &mut out);
    write_stdout(&String::from_utf8_lossy(&out))?;
    Ok(())
}

/// `micelio man`: the manual page (roff) from the clap definition.
pub(crate) fn man() -> Result<(), Failure> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command())
        .render(&mut out)
        .map_err(|e| Failure::from(anyhow::anyhow!("cannot render the manual page: {e}")))?;
    write_stdout(&String::from_utf8_lossy(&out))?;
    Ok(())
}

/// The lines `micelio run` prints on stdout when the node starts.
pub(crate) fn print_banner(config: &Config, identity: &Identity) -> anyhow::Result<()> {
    write_stdout(&format!(
        "micelio {version}\n\
         node id     {node_id}\n\
         public key  {key}\n\
         name        {name}\n\
         data dir    {data_dir}\n",
        version = env!("CARGO_PKG_VERSION"),
        node_id = identity.node_id(),
        key = identity.openssh_public_line().trim_end(),
        name = config.node.name,
        data_dir = config.node.data_dir.display(),
    ))
}

/// Writes `text` to stdout and flushes it. A closed pipe (`micelio id |
/// head -1`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_data_dir_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        open_data_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        open_data_dir(&dir).unwrap();
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let err = open_data_dir(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
