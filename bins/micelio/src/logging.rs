//! The log: `tracing` events written to stderr as text or JSON lines.
//!
//! The filter comes from `logging.level` only; `RUST_LOG` is not consulted
//! (set `MICELIO_LOGGING__LEVEL` instead). Every line carries its target,
//! the module that logged it (`micelio::node`, `micelio_transport::…`),
//! which names the component. Stdout stays free for command output.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Level names accepted alone or after `target=` in a filter.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks `logging.level`: a level name, or comma-separated tracing
/// directives each of which is a level or `target[span{field}]=level`.
/// Returns it normalised (directives trimmed), ready for [`EnvFilter`].
///
/// A bare word that is not a level is refused, although tracing would read
/// it as a target name: `debgu` is far more likely a typo than a target.
///
/// # Errors
/// A message saying which directive is wrong.
pub(crate) fn parse_filter(text: &str) -> Result<String, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    if text.trim().is_empty() {
        return Err(format!(
            "must be one of {} or a filter directive",
            LEVELS.join("|")
        ));
    }
    for directive in &directives {
        let level = directive
            .rsplit_once('=')
            .map_or(*directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level ({}) or a `target=level` directive",
                LEVELS.join("|")
            ));
        }
    }
    let normalised = directives.join(",");
    build_filter(&normalised).map(|_| normalised)
}

fn build_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("{directives:?} is not a valid filter: {e}"))
}

/// Installs the global subscriber. Call once, before anything logs.
///
/// # Errors
/// If the level does not parse (validation prevents it) or a subscriber is
/// already installed.
pub(crate) fn init(config: &LoggingConfig) -> anyhow::Result<()> {
    let filter = parse_filter(&config.level)
        .and_then(|directives| build_filter(&directives))
        .map_err(|e| anyhow::anyhow!("logging.level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let installed = match config.format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn levels_and_directives_parse() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,micelio_transport=debug",
            "micelio::node=trace",
            "info, micelio_gossip=warn",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_filter(" info, micelio_gossip=warn ").as_deref(),
            Ok("info,micelio_gossip=warn")
        );
    }

    #[test]
    fn typos_and_garbage_are_refused() {
        for bad in ["", "debgu", "info,", "micelio=loud", "verbose", "x=["] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
