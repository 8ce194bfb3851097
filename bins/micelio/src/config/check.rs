//! Field-by-field checking of the raw (merged, untyped) configuration.
//!
//! The raw configuration is a figment [`Dict`] of loose [`Value`]s: a wrong
//! type or an out-of-range number in one field is recorded as a
//! [`FieldError`] and checking goes on, so that every bad field is reported
//! in one run. A [`Checker`] walks the whole tree; each section of
//! [`super::Config`] reads its fields through a [`Section`], whose readers
//! return `None` (after recording why) for a value they cannot use.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::value::{Dict, Num, Tag, Value};

/// The longest duration any setting accepts (one day). Bounding durations
/// keeps deadline arithmetic (`Instant + Duration`) far from overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// One problem with one configuration field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The dotted path of the field, e.g. `network.max_peers`.
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) message: String,
    /// Where the bad value came from (`in /etc/micelio.toml`,
    /// `from MICELIO_NETWORK__LISTEN`, `from --listen`), if known.
    pub(crate) origin: Option<String>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        Ok(())
    }
}

/// What the checker knows about the machine, so that validation itself never
/// reads the environment (and tests can pin it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// The machine's host name, if it has one.
    pub(crate) hostname: Option<String>,
    /// The user's home directory, used to expand a leading `~`.
    pub(crate) home: Option<PathBuf>,
}

impl Host {
    /// Reads the host name and home directory of this process.
    pub(crate) fn from_process() -> Self {
        let hostname = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|name| name.trim().to_owned())
            .chain(std::env::var("HOSTNAME").ok())
            .find(|name| !name.is_empty());
        let home = std::env::home_dir().filter(|home| !home.as_os_str().is_empty());
        Self { hostname, home }
    }
}

/// Tells where the value with a given tag at a given path came from.
pub(crate) type OriginFn<'a> = dyn Fn(&str, Tag) -> Option<String> + 'a;

/// Walks a raw configuration tree, collecting every [`FieldError`].
pub(crate) struct Checker<'a> {
    root: &'a Dict,
    host: &'a Host,
    origin: &'a OriginFn<'a>,
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    /// A checker over `root`; `origin` names the source of a value.
    pub(crate) fn new(root: &'a Dict, host: &'a Host, origin: &'a OriginFn<'a>) -> Self {
        Self {
            root,
            host,
            origin,
            errors: Vec::new(),
        }
    }

    /// Reports every key of `root` that `schema` (the serialized defaults)
    /// does not have, with a suggestion when the key looks like a typo.
    pub(crate) fn unknown_keys(&mut self, schema: &Dict) {
        let root = self.root;
        for (section, value) in root {
            let Some(known) = schema.get(section) else {
                let hint = did_you_mean(section, schema.keys());
                self.push(section, value.tag(), format!("unknown section{hint}"));
                continue;
            };
            let (Some(fields), Some(known)) = (value.as_dict(), known.as_dict()) else {
                continue; // a non-table section is reported by `section()`
            };
            for (key, value) in fields {
                if !known.contains_key(key) {
                    let hint = did_you_mean(key, known.keys());
                    self.push(
                        &format!("{section}.{key}"),
                        value.tag(),
                        format!("unknown key{hint}"),
                    );
                }
            }
        }
    }

    /// The section called `name`; a section that is not a table is reported
    /// once here, and its fields then read as `None` without more errors.
    pub(crate) fn section(&mut self, name: &'static str) -> Section<'_, 'a> {
        let root = self.root;
        let dict = match root.get(name) {
            Some(Value::Dict(_, dict)) => Some(dict),
            Some(other) => {
                let message = format!("expected a table, got {}", describe(other));
                self.push(name, other.tag(), message);
                None
            }
            None => {
                self.push(name, Tag::Default, "missing section".to_owned());
                None
            }
        };
        Section {
            checker: self,
            name: name.into(),
            dict,
        }
    }

    /// How many tables the array of tables `name` (`[[name]]`) holds; a
    /// value that is not an array of tables is reported (and counts 0).
    pub(crate) fn table_count(&mut self, name: &'static str) -> usize {
        let root = self.root;
        match root.get(name) {
            None => 0,
            Some(Value::Array(_, values)) => {
                for (i, v) in values.iter().enumerate() {
                    if !matches!(v, Value::Dict(..)) {
                        let message =
                            format!("item {}: expected a table, got {}", i + 1, describe(v));
                        self.push(name, v.tag(), message);
                    }
                }
                values.len()
            }
            Some(other) => {
                let message = format!(
                    "expected an array of tables ([[{name}]]), got {}",
                    describe(other)
                );
                self.push(name, other.tag(), message);
                0
            }
        }
    }

    /// Table `i` (0-based) of the array of tables `name`, read as a section
    /// named `name[i+1]`; `None` when it is not a table (already reported
    /// by [`Checker::table_count`]).
    pub(crate) fn table(&mut self, name: &'static str, i: usize) -> Option<Section<'_, 'a>> {
        let root = self.root;
        let Some(Value::Array(_, values)) = root.get(name) else {
            return None;
        };
        let Some(Value::Dict(_, dict)) = values.get(i) else {
            return None;
        };
        Some(Section {
            checker: self,
            name: format!("{name}[{}]", i + 1).into(),
            dict: Some(dict),
        })
    }

    /// Records an error about the field at the dotted `path` (used for rules
    /// that span sections).
    pub(crate) fn error_at(&mut self, path: &str, message: impl Into<String>) {
        let tag = find(self.root, path).map_or(Tag::Default, Value::tag);
        self.push(path, tag, message.into());
    }

    /// Every error recorded so far, in the order found.
    pub(crate) fn finish(self) -> Vec<FieldError> {
        self.errors
    }

    fn push(&mut self, path: &str, tag: Tag, message: String) {
        let origin = (self.origin)(path, tag);
        self.errors.push(FieldError {
            field: path.to_owned(),
            message,
            origin,
        });
    }
}

fn find<'v>(root: &'v Dict, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut value = root.get(parts.next()?)?;
    for part in parts {
        value = value.as_dict()?.get(part)?;
    }
    Some(value)
}

/// One section of the raw configuration, read field by field.
///
/// Every reader records a [`FieldError`] naming `section.key` and returns
/// `None` when the value cannot be used.
pub(crate) struct Section<'c, 'a> {
    checker: &'c mut Checker<'a>,
    name: std::borrow::Cow<'static, str>,
    dict: Option<&'a Dict>,
}

impl<'a> Section<'_, 'a> {
    /// What the checker knows about the machine.
    pub(crate) fn host(&self) -> &'a Host {
        self.checker.host
    }

    /// Records `message` against `key` of this section.
    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        let tag = self
            .dict
            .and_then(|dict| dict.get(key))
            .map_or(Tag::Default, Value::tag);
        let path = format!("{}.{key}", self.name);
        self.checker.push(&path, tag, message.into());
    }

    fn value(&mut self, key: &str) -> Option<&'a Value> {
        let dict = self.dict?;
        let value = dict.get(key);
        if value.is_none() {
            self.error(key, "missing");
        }
        value
    }

    /// A string; numbers and booleans are type errors.
    pub(crate) fn string(&mut self, key: &str) -> Option<String> {
        match self.value(key)? {
            Value::String(_, s) => Some(s.clone()),
            Value::Char(_, c) => Some(c.to_string()),
            other => {
                let message = format!("expected a string, got {}", describe(other));
                self.error(key, message);
                None
            }
        }
    }

    /// A list of strings: a TOML array, or one string of comma-separated
    /// items (the form environment variables and flags use; an empty string
    /// is the empty list). Items are trimmed; empty items are errors.
    pub(crate) fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let items: Vec<String> = match self.value(key)? {
            Value::Array(_, values) => {
                let mut items = Vec::with_capacity(values.len());
                let mut ok = true;
                for (i, value) in values.iter().enumerate() {
                    match value {
                        Value::String(_, s) => items.push(s.trim().to_owned()),
                        other => {
                            let message = format!(
                                "item {}: expected a string, got {}",
                                i + 1,
                                describe(other)
                            );
                            self.error(key, message);
                            ok = false;
                        }
                    }
                }
                if !ok {
                    return None;
                }
                items
            }
            Value::String(_, s) => split_list(s),
            other => {
                let message = format!("expected a list of strings, got {}", describe(other));
                self.error(key, message);
                return None;
            }
        };
        if let Some(i) = items.iter().position(String::is_empty) {
            self.error(key, format!("item {} is empty", i + 1));
            return None;
        }
        Some(items)
    }

    /// An integer in `min..=max`, from a number or a decimal string.
    pub(crate) fn number<T: TryFrom<u64>>(&mut self, key: &str, min: u64, max: u64) -> Option<T> {
        let value = self.value(key)?;
        let n = match integer(value) {
            Ok(n) => n,
            Err(message) => {
                self.error(key, message);
                return None;
            }
        };
        if n < i128::from(min) || n > i128::from(max) {
            self.error(key, format!("must be between {min} and {max}, got {n}"));
            return None;
        }
        // In range, so it fits both u64 and (by the callers' bounds) T.
        match u64::try_from(n).ok().and_then(|n| T::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.error(key, format!("{n} is too large for this platform"));
                None
            }
        }
    }

    /// A duration written with a unit ("30s", "1m", "500ms"), greater than
    /// zero and at most [`MAX_DURATION`].
    pub(crate) fn duration(&mut self, key: &str) -> Option<Duration> {
        let parsed = match self.value(key)? {
            Value::String(_, s) => parse_duration(s),
            other => Err(format!(
                "expected a duration with a unit such as \"30s\", got {}",
                describe(other)
            )),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    /// Whether the section has `key`.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.dict.is_some_and(|d| d.contains_key(key))
    }

    /// The table `key` of this section, read as the section `name.key`;
    /// `None` (reported) when it is missing or not a table.
    pub(crate) fn table(&mut self, key: &str) -> Option<Section<'_, 'a>> {
        let name = format!("{}.{key}", self.name);
        match self.value(key)? {
            Value::Dict(_, dict) => Some(Section {
                checker: &mut *self.checker,
                name: name.into(),
                dict: Some(dict),
            }),
            other => {
                let message = format!("expected a table, got {}", describe(other));
                self.error(key, message);
                None
            }
        }
    }

    /// A table of strings (`{ NAME = "value", … }`).
    pub(crate) fn string_map(
        &mut self,
        key: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let Value::Dict(_, dict) = self.value(key)? else {
            self.error(key, "expected a table of strings");
            return None;
        };
        let mut out = std::collections::BTreeMap::new();
        let mut ok = true;
        for (k, v) in dict {
            match v {
                Value::String(_, s) => {
                    out.insert(k.clone(), s.clone());
                }
                other => {
                    let message = format!("{k}: expected a string, got {}", describe(other));
                    self.error(key, message);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A list of integers, each in `min..=max`.
    pub(crate) fn numbers<T: TryFrom<u64>>(
        &mut self,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<Vec<T>> {
        let Value::Array(_, values) = self.value(key)? else {
            self.error(key, "expected a list of integers");
            return None;
        };
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let n = match integer(v) {
                Ok(n) if n >= i128::from(min) && n <= i128::from(max) => n,
                Ok(n) => {
                    self.error(
                        key,
                        format!("item {}: must be between {min} and {max}, got {n}", i + 1),
                    );
                    return None;
                }
                Err(message) => {
                    self.error(key, format!("item {}: {message}", i + 1));
                    return None;
                }
            };
            match u64::try_from(n).ok().and_then(|n| T::try_from(n).ok()) {
                Some(n) => out.push(n),
                None => {
                    self.error(key, format!("item {}: {n} is too large", i + 1));
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A string that may be absent (`None`, no error).
    pub(crate) fn optional_string(&mut self, key: &str) -> Option<String> {
        if self.has(key) {
            self.string(key)
        } else {
            None
        }
    }

    /// A duration that may be absent (then `default`).
    pub(crate) fn optional_duration(&mut self, key: &str, default: Duration) -> Option<Duration> {
        if self.has(key) {
            self.duration(key)
        } else {
            Some(default)
        }
    }

    /// Reports every key of this section not in `known` (for tables that
    /// have no defaults to serve as their schema).
    pub(crate) fn unknown_keys(&mut self, known: &[&str]) {
        let Some(dict) = self.dict else { return };
        for key in dict.keys() {
            if !known.contains(&key.as_str()) {
                let hint = did_you_mean(
                    key,
                    known
                        .iter()
                        .map(|k| (*k).to_owned())
                        .collect::<Vec<_>>()
                        .iter(),
                );
                self.error(key, format!("unknown key{hint}"));
            }
        }
    }

    /// A string parsed by `parse`, whose error message is recorded as is.
    pub(crate) fn parsed<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(key)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }
}

/// Splits a comma-separated list, accepting optional surrounding brackets
/// and quotes around items: `a,b`, `[a, b]` and `["a", "b"]` are the same.
fn split_list(text: &str) -> Vec<String> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text)
        .trim();
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            item.strip_prefix('"')
                .and_then(|i| i.strip_suffix('"'))
                .unwrap_or(item)
                .trim()
                .to_owned()
        })
        .collect()
}

fn integer(value: &Value) -> Result<i128, String> {
    match value {
        Value::Num(_, num) => {
            if let Some(n) = num.to_u128() {
                Ok(i128::try_from(n).unwrap_or(i128::MAX))
            } else if let Some(n) = num.to_i128() {
                Ok(n)
            } else {
                Err(format!("expected an integer, got {}", describe(value)))
            }
        }
        Value::String(_, s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("expected an integer, got {s:?}")),
        other => Err(format!("expected an integer, got {}", describe(other))),
    }
}

/// Parses a humantime duration and applies the common bounds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        format!("{text:?} is not a duration (write a number and a unit, e.g. \"30s\", \"1m\", \"500ms\")")
    })?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    if d > MAX_DURATION {
        return Err(format!(
            "must be at most {}, got {}",
            humantime::format_duration(MAX_DURATION),
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

/// Parses an `IP:port` address to bind (IPv6 in brackets: `[::1]:4000`).
pub(crate) fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not an IP:port address to listen on (e.g. \"0.0.0.0:4000\")")
    })
}

/// Checks a `host:port` address that others dial: an IP or a DNS name, and
/// a port from 1 to 65535. Returns it trimmed.
pub(crate) fn parse_host_port(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = |why: &str| format!("{text:?} is not a host:port address ({why})");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad("port 0 cannot be dialled"));
        }
        return Ok(text.to_owned());
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("missing \":port\""));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be dialled"));
    }
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') || host.contains(':') {
        return Err(bad(
            "write an IPv6 address in brackets, e.g. \"[::1]:4000\"",
        ));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(bad("the host is not a valid IP address or DNS name"));
    }
    Ok(text.to_owned())
}

/// Whether the host part of a checked `host:port` is 0.0.0.0 or `::`.
pub(crate) fn is_wildcard_host(host_port: &str) -> bool {
    host_port
        .parse::<SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_unspecified())
}

/// A short description of a raw value for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, num) => describe_num(*num),
        Value::Empty(..) => "an empty value".to_owned(),
        Value::Dict(..) => "a table".to_owned(),
        Value::Array(..) => "a list".to_owned(),
    }
}

fn describe_num(num: Num) -> String {
    if let Some(n) = num.to_u128() {
        n.to_string()
    } else if let Some(n) = num.to_i128() {
        n.to_string()
    } else if let Some(f) = num.to_f64() {
        format!("{f:?}")
    } else {
        "a number".to_owned()
    }
}

/// `" (did you mean `x`?)"` when a known key is within a small edit
/// distance of `key`, else `""`.
fn did_you_mean<'k>(key: &str, known: impl Iterator<Item = &'k String>) -> String {
    let best = known
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(d, candidate)| *d <= 2.max(candidate.len() / 3))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, candidate)) => format!(" (did you mean `{candidate}`?)"),
        None => String::new(),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            row.push(substitute.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_accept_commas_brackets_and_quotes() {
        assert_eq!(split_list(""), Vec::<String>::new());
        assert_eq!(split_list(" [ ] "), Vec::<String>::new());
        assert_eq!(split_list("a:1, b:2"), ["a:1", "b:2"]);
        assert_eq!(split_list("[\"a:1\",\"b:2\"]"), ["a:1", "b:2"]);
        assert_eq!(split_list("a,,b"), ["a", "", "b"]);
    }

    #[test]
    fn host_port_rules() {
        for ok in [
            "127.0.0.1:4000",
            "[::1]:4000",
            "seed.example.org:7000",
            "localhost:1",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "nope",
            "host:",
            "host:0",
            "host:65536",
            ":4000",
            "::1:4000",
            "bad host:4000",
            "-x.org:1",
            "127.0.0.1:0",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
        assert!(is_wildcard_host("0.0.0.0:4000"));
        assert!(is_wildcard_host("[::]:4000"));
        assert!(!is_wildcard_host("zero.example:4000"));
    }

    #[test]
    fn durations_need_a_unit_and_bounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2days").is_err());
        assert!(parse_duration("99999999999999999999years").is_err());
    }

    #[test]
    fn suggestions_for_typos() {
        let known = ["max_peers".to_owned(), "listen".to_owned()];
        assert_eq!(
            did_you_mean("max_peer", known.iter()),
            " (did you mean `max_peers`?)"
        );
        assert_eq!(did_you_mean("colour", known.iter()), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
