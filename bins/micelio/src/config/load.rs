//! Stage one: merging the configuration sources with figment.
//!
//! Precedence, lowest first: the defaults ([`super::Config::defaults`]), the
//! TOML file, `MICELIO_<SECTION>__<KEY>` environment variables, then
//! command-line flags. Every layer is a figment provider of loose values
//! (environment values and flags stay strings), so that stage two,
//! [`super::Config::check`], can report each bad field with where its value
//! came from.

use std::fmt;
use std::path::PathBuf;

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::Config;
use super::check::{Checker, FieldError, Host};

/// The configuration sections, as environment variable names see them.
const SECTIONS: &[&str] = &["node", "ssh", "network", "gossip", "partyline", "logging"];

/// Prefix of the environment variables that set configuration keys.
pub(crate) const ENV_PREFIX: &str = "MICELIO_";
/// Separator between section and key in environment variable names.
pub(crate) const ENV_SEPARATOR: &str = "__";
/// Environment variable naming the config file (like `--config`); the one
/// `MICELIO_` variable that is not a configuration key.
pub(crate) const CONFIG_ENV: &str = "MICELIO_CONFIG";

const DEFAULTS: &str = "defaults";
const ENVIRONMENT: &str = "environment";
const FLAGS: &str = "command-line flags";

/// Configuration values given as command-line flags (the top layer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    /// `--name` → `node.name`.
    pub(crate) name: Option<String>,
    /// `--data-dir` → `node.data_dir`.
    pub(crate) data_dir: Option<String>,
    /// `--ssh-listen` → `ssh.listen`.
    pub(crate) ssh_listen: Option<String>,
    /// `--listen` → `network.listen`.
    pub(crate) listen: Option<String>,
    /// `--bootstrap` (repeatable) → `network.bootstrap`, replacing the list
    /// of lower layers when given at least once.
    pub(crate) bootstrap: Vec<String>,
    /// `--log-level` → `logging.level`.
    pub(crate) log_level: Option<String>,
    /// `--log-format` → `logging.format`.
    pub(crate) log_format: Option<String>,
    /// `--worker-threads` → `node.worker_threads`.
    pub(crate) worker_threads: Option<String>,
}

/// Which flag sets which key, for error messages.
const FLAG_KEYS: &[(&str, &str)] = &[
    ("node.name", "--name"),
    ("node.data_dir", "--data-dir"),
    ("ssh.listen", "--ssh-listen"),
    ("network.listen", "--listen"),
    ("network.bootstrap", "--bootstrap"),
    ("logging.level", "--log-level"),
    ("logging.format", "--log-format"),
    ("node.worker_threads", "--worker-threads"),
];

impl Overrides {
    fn to_dict(&self) -> Dict {
        let mut dict = Dict::new();
        let scalars = [
            ("node.name", &self.name),
            ("node.data_dir", &self.data_dir),
            ("ssh.listen", &self.ssh_listen),
            ("network.listen", &self.listen),
            ("logging.level", &self.log_level),
            ("logging.format", &self.log_format),
            ("node.worker_threads", &self.worker_threads),
        ];
        for (path, value) in scalars {
            if let Some(value) = value {
                insert(&mut dict, path.split('.'), Value::from(value.as_str()));
            }
        }
        if !self.bootstrap.is_empty() {
            let list = self.bootstrap.iter().map(|a| Value::from(a.as_str()));
            insert(
                &mut dict,
                "network.bootstrap".split('.'),
                Value::Array(Tag::Default, list.collect()),
            );
        }
        dict
    }
}

/// The config file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigFile {
    /// No file.
    None,
    /// A file that must exist (`--config`, `MICELIO_CONFIG`).
    Required(PathBuf),
    /// A file read only if it exists (`~/.micelio/config.toml`).
    IfExists(PathBuf),
}

/// Everything the configuration is made from.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The TOML file layer.
    pub(crate) file: ConfigFile,
    /// Environment variables (all of them; the loader picks `MICELIO_…`).
    pub(crate) env: Vec<(String, String)>,
    /// The flags layer.
    pub(crate) overrides: Overrides,
    /// Host name and home directory, for defaults and `~` expansion.
    pub(crate) host: Host,
}

impl Sources {
    /// The sources of this process: `config` (from `--config` or
    /// `MICELIO_CONFIG`) or else `~/.micelio/config.toml` if it exists, the
    /// process environment, and the given flags.
    pub(crate) fn from_process(config: Option<PathBuf>, overrides: Overrides) -> Self {
        let host = Host::from_process();
        let file = match config {
            Some(path) => ConfigFile::Required(path),
            None => match &host.home {
                Some(home) => ConfigFile::IfExists(home.join(".micelio").join("config.toml")),
                None => ConfigFile::None,
            },
        };
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self {
            file,
            env,
            overrides,
            host,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// The config file is missing, unreadable or not valid TOML.
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, with the position of a syntax error.
        message: String,
    },
    /// Some fields have bad values; every one is listed.
    Invalid(Vec<FieldError>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, message } => {
                write!(f, "cannot load config file {}: {message}", path.display())
            }
            Self::Invalid(errors) => {
                let n = errors.len();
                write!(
                    f,
                    "invalid configuration ({n} problem{}):",
                    if n == 1 { "" } else { "s" }
                )?;
                for error in errors {
                    write!(f, "\n  {error}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Loads and validates the configuration from `sources`.
///
/// # Errors
/// [`ConfigError::File`] if the config file cannot be read or parsed;
/// [`ConfigError::Invalid`] with every bad field otherwise.
pub(crate) fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let defaults = Config::defaults(&sources.host);
    let schema = match Value::serialize(&defaults) {
        Ok(Value::Dict(_, dict)) => dict,
        // The defaults are plain structs of strings, numbers and lists.
        _ => unreachable!("the defaults serialize to a table"),
    };

    let mut figment = Figment::from(Layer::new(DEFAULTS, schema.clone()));
    let file_path = match &sources.file {
        ConfigFile::None => None,
        ConfigFile::Required(path) => Some(path.clone()),
        ConfigFile::IfExists(path) => path.is_file().then(|| path.clone()),
    };
    if let Some(path) = &file_path {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(Layer::new(ENVIRONMENT, env_dict(&sources.env)))
        .merge(Layer::new(FLAGS, sources.overrides.to_dict()));

    let root = match figment.find_value("") {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => Dict::new(),
        Err(e) => {
            return Err(ConfigError::File {
                path: file_path.unwrap_or_default(),
                message: e.to_string(),
            });
        }
    };

    let origin = |path: &str, tag: Tag| origin(&figment, path, tag);
    let mut checker = Checker::new(&root, &sources.host, &origin);
    checker.unknown_keys(&schema);
    let config = Config::check(&mut checker);
    let errors = checker.finish();
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(errors)),
    }
}

/// The keys the configuration accepts, as `section.key` paths.
#[cfg(test)]
pub(crate) fn schema_keys(host: &Host) -> std::collections::BTreeSet<String> {
    let Ok(Value::Dict(_, dict)) = Value::serialize(Config::defaults(host)) else {
        unreachable!("the defaults serialize to a table");
    };
    dict.iter()
        .flat_map(|(section, value)| {
            let keys = value
                .as_dict()
                .map(|d| d.keys().cloned().collect::<Vec<_>>());
            keys.unwrap_or_default()
                .into_iter()
                .map(move |key| format!("{section}.{key}"))
        })
        .collect()
}

/// The environment layer: `MICELIO_NETWORK__MAX_PEERS=20` becomes
/// `network.max_peers = "20"` (names lowercased, values kept as strings).
/// A variable is taken as a key when it has the `__` separator, or when it
/// starts with a section name and a single `_` (`MICELIO_NETWORK_MAX_PEERS`,
/// a likely typo, is then reported rather than ignored). Other `MICELIO_`
/// variables (say, `MICELIO_SLOW_TESTS`) belong to other tools and are left
/// alone.
fn env_dict(env: &[(String, String)]) -> Dict {
    let mut dict = Dict::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV || key.is_empty() {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let sectioned = SECTIONS.iter().any(|s| {
            key.strip_prefix(s)
                .is_some_and(|rest| rest.starts_with('_'))
        });
        if !key.contains(ENV_SEPARATOR) && !sectioned {
            continue;
        }
        insert(
            &mut dict,
            key.split(ENV_SEPARATOR),
            Value::from(value.as_str()),
        );
    }
    dict
}

/// The environment variable that sets `path`.
pub(crate) fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

fn origin(figment: &Figment, path: &str, tag: Tag) -> Option<String> {
    let metadata = figment.get_metadata(tag)?;
    if let Some(file) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        return Some(format!("in {}", file.display()));
    }
    match metadata.name.as_ref() {
        ENVIRONMENT => Some(format!("from {}", env_var_name(path))),
        FLAGS => FLAG_KEYS
            .iter()
            .find(|(key, _)| *key == path)
            .map(|(_, flag)| format!("from {flag}")),
        _ => None,
    }
}

/// Inserts `value` at the nested key `parts`, creating tables on the way
/// (and replacing a non-table in the way: the later variable wins).
fn insert<'p>(dict: &mut Dict, mut parts: impl Iterator<Item = &'p str>, value: Value) {
    let Some(first) = parts.next() else {
        return;
    };
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        dict.insert(first.to_owned(), value);
        return;
    }
    let entry = dict
        .entry(first.to_owned())
        .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::Dict(Tag::Default, Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert(inner, rest.into_iter(), value);
    }
}

/// A named figment provider over a ready-made table.
struct Layer {
    name: &'static str,
    data: Dict,
}

impl Layer {
    fn new(name: &'static str, data: Dict) -> Self {
        Self { name, data }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}
