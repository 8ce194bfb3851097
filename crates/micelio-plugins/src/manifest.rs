//! What a plugin claims, and the checks that keep claims apart.
//!
//! A [`Manifest`] lists a plugin's partyline commands, the gossip message
//! types it owns (1000 and above), the desired-state key prefixes it
//! reconciles and the events it wants. The host reads it once, at start,
//! checks every field ([`Manifest::check`]) and refuses claims that collide
//! with another plugin's or with a command that is already registered
//! ([`Claims`]).

use std::collections::{BTreeMap, BTreeSet};

use micelio_state::desired::MAX_KEY_LEN;
use micelio_wire::MsgType;
use serde::{Deserialize, Serialize};

use crate::PluginError;

/// Longest plugin name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest command name.
pub const MAX_COMMAND_LEN: usize = 32;
/// Longest usage or help line of a command.
pub const MAX_HELP_LEN: usize = 200;
/// Most commands, message types or prefixes one plugin may claim (each).
pub const MAX_CLAIMS: usize = 32;

/// One partyline command of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandDecl {
    /// Its name, without the slash: 1–32 of `a-z`, `0-9`, `-`, `_`.
    pub name: String,
    /// How to call it, e.g. `/uptime [seconds]` (shown by `/help`).
    #[serde(default)]
    pub usage: String,
    /// One line on what it does.
    #[serde(default)]
    pub help: String,
}

impl CommandDecl {
    /// A command with its usage and help lines.
    pub fn new(name: &str, usage: &str, help: &str) -> Self {
        Self {
            name: name.to_owned(),
            usage: usage.to_owned(),
            help: help.to_owned(),
        }
    }
}

/// A kind of event a plugin can subscribe to. Messages of the types it
/// claims always reach it; these are the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Chat lines of the mesh (this node's and others').
    Chat,
    /// Every change of the replicated state map.
    State,
    /// This node's direct peers connecting and going away.
    Peers,
    /// Members of the mesh turning alive, dead, or leaving.
    Members,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Chat, Self::State, Self::Peers, Self::Members];

    /// Its name in the config and in the external protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::State => "state",
            Self::Peers => "peers",
            Self::Members => "members",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What a plugin claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Partyline commands it answers.
    #[serde(default)]
    pub commands: Vec<CommandDecl>,
    /// Gossip message types it owns (each 1000 or above): it alone may
    /// send them from this node, and receives every one delivered here.
    #[serde(default)]
    pub msg_types: Vec<u32>,
    /// Desired-state key prefixes it reconciles (e.g. `files/`).
    #[serde(default)]
    pub desired_prefixes: Vec<String>,
    /// Events it wants.
    #[serde(default)]
    pub events: Vec<EventKind>,
}

impl Manifest {
    /// An empty manifest.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a command.
    #[must_use]
    pub fn command(mut self, name: &str, usage: &str, help: &str) -> Self {
        self.commands.push(CommandDecl::new(name, usage, help));
        self
    }

    /// With a message type.
    #[must_use]
    pub fn msg_type(mut self, msg_type: u32) -> Self {
        self.msg_types.push(msg_type);
        self
    }

    /// With a desired-state prefix.
    #[must_use]
    pub fn desired_prefix(mut self, prefix: &str) -> Self {
        self.desired_prefixes.push(prefix.to_owned());
        self
    }

    /// With an event kind.
    #[must_use]
    pub fn event(mut self, kind: EventKind) -> Self {
        self.events.push(kind);
        self
    }

    /// Checks every field of the manifest of `plugin`.
    ///
    /// # Errors
    /// [`PluginError::Manifest`] naming the plugin and the bad field.
    pub fn check(&self, plugin: &str) -> Result<(), PluginError> {
        let bad = |why: String| PluginError::Manifest {
            plugin: plugin.to_owned(),
            why,
        };
        for (what, n) in [
            ("commands", self.commands.len()),
            ("msg_types", self.msg_types.len()),
            ("desired_prefixes", self.desired_prefixes.len()),
        ] {
            if n > MAX_CLAIMS {
                return Err(bad(format!("{n} {what}, more than {MAX_CLAIMS}")));
            }
        }
        let mut names = BTreeSet::new();
        for c in &self.commands {
            check_command_name(&c.name).map_err(&bad)?;
            if !names.insert(c.name.as_str()) {
                return Err(bad(format!("command /{} declared twice", c.name)));
            }
            for (what, text) in [("usage", &c.usage), ("help", &c.help)] {
                if text.len() > MAX_HELP_LEN || text.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "the {what} of /{} must be one line of at most {MAX_HELP_LEN} bytes",
                        c.name
                    )));
                }
            }
        }
        let mut types = BTreeSet::new();
        for &t in &self.msg_types {
            if t < MsgType::PLUGIN_START {
                return Err(bad(format!(
                    "msg_type {t} is below {}: plugins own types from {} up",
                    MsgType::PLUGIN_START,
                    MsgType::PLUGIN_START
                )));
            }
            if !types.insert(t) {
                return Err(bad(format!("msg_type {t} declared twice")));
            }
        }
        let mut prefixes = BTreeSet::new();
        for p in &self.desired_prefixes {
            let ok = !p.is_empty()
                && p.len() <= MAX_KEY_LEN
                && !p.starts_with('/')
                && p.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err(bad(format!(
                    "desired prefix {p:?} must be 1–{MAX_KEY_LEN} printable ASCII bytes, not starting with /"
                )));
            }
            if !prefixes.insert(p.as_str()) {
                return Err(bad(format!("desired prefix {p:?} declared twice")));
            }
        }
        Ok(())
    }
}

/// Whether `name` is 1–`max` of `a-z`, `0-9`, `-`, `_` (starting with a
/// letter when `letter_first`).
fn is_word(name: &str, max: usize, letter_first: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && (!letter_first || name.starts_with(|c: char| c.is_ascii_lowercase()))
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks a plugin name: 1–32 of `a-z`, `0-9`, `-`, `_`, starting with a
/// letter.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if is_word(name, MAX_NAME_LEN, true) {
        return Ok(());
    }
    Err(format!(
        "plugin name {name:?} must be 1–{MAX_NAME_LEN} of a-z, 0-9, - and _, starting with a letter"
    ))
}

fn check_command_name(name: &str) -> Result<(), String> {
    if is_word(name, MAX_COMMAND_LEN, false) {
        return Ok(());
    }
    Err(format!(
        "command name {name:?} must be 1–{MAX_COMMAND_LEN} of a-z, 0-9, - and _"
    ))
}

/// Who claims what, across the plugins of one node.
#[derive(Debug, Default)]
pub struct Claims {
    plugins: BTreeSet<String>,
    commands: BTreeMap<String, String>,
    msg_types: BTreeMap<u32, String>,
    prefixes: BTreeMap<String, String>,
}

impl Claims {
    /// No claims yet; `taken` are the commands already registered on the
    /// partyline (they belong to the node).
    pub fn new<'a>(taken: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            commands: taken
                .into_iter()
                .map(|c| (c.to_owned(), "the node".to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    /// Adds the claims of `plugin`, after checking its manifest; nothing is
    /// added when one collides.
    ///
    /// # Errors
    /// [`PluginError::Manifest`], [`PluginError::Duplicate`] or
    /// [`PluginError::Conflict`] naming both claimants.
    pub fn add(&mut self, plugin: &str, manifest: &Manifest) -> Result<(), PluginError> {
        check_name(plugin).map_err(|why| PluginError::Manifest {
            plugin: plugin.to_owned(),
            why,
        })?;
        manifest.check(plugin)?;
        if self.plugins.contains(plugin) {
            return Err(PluginError::Duplicate(plugin.to_owned()));
        }
        let conflict = |what: String, other: &String| PluginError::Conflict {
            plugin: plugin.to_owned(),
            other: other.clone(),
            what,
        };
        for c in &manifest.commands {
            if let Some(other) = self.commands.get(&c.name) {
                return Err(conflict(format!("command /{}", c.name), other));
            }
        }
        for t in &manifest.msg_types {
            if let Some(other) = self.msg_types.get(t) {
                return Err(conflict(format!("msg_type {t}"), other));
            }
        }
        for p in &manifest.desired_prefixes {
            if let Some(other) = self.prefixes.get(p) {
                return Err(conflict(format!("desired prefix {p:?}"), other));
            }
        }
        self.plugins.insert(plugin.to_owned());
        for c in &manifest.commands {
            self.commands.insert(c.name.clone(), plugin.to_owned());
        }
        for t in &manifest.msg_types {
            self.msg_types.insert(*t, plugin.to_owned());
        }
        for p in &manifest.desired_prefixes {
            self.prefixes.insert(p.clone(), plugin.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uptime() -> Manifest {
        Manifest::new()
            .command("uptime", "/uptime", "every node's uptime")
            .msg_type(1000)
            .event(EventKind::Members)
    }

    #[test]
    fn a_good_manifest_passes_and_bad_fields_are_named() {
        assert!(uptime().check("uptime").is_ok());
        let cases = [
            (Manifest::new().msg_type(999), "msg_type 999 is below 1000"),
            (
                Manifest::new().msg_type(1000).msg_type(1000),
                "msg_type 1000 declared twice",
            ),
            (Manifest::new().command("Up", "", ""), "command name \"Up\""),
            (
                Manifest::new().command("up", "/up\nsecond", ""),
                "the usage of /up must be one line",
            ),
            (
                Manifest::new().command("up", "", "").command("up", "", ""),
                "command /up declared twice",
            ),
            (Manifest::new().desired_prefix(""), "desired prefix \"\""),
            (
                Manifest::new().desired_prefix("/etc/"),
                "not starting with /",
            ),
            (Manifest::new().desired_prefix("a b"), "printable ASCII"),
        ];
        for (m, want) in cases {
            let e = m.check("p").unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(e.contains("plugin p"), "{e}");
        }
        let mut many = Manifest::new();
        for i in 0..=MAX_CLAIMS as u32 {
            many = many.msg_type(1000 + i);
        }
        assert!(many.check("p").is_err());
    }

    #[test]
    fn names_are_checked() {
        for good in ["uptime", "files", "a", "my-plugin_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Upper", "1st", "-x", "has space", "ü", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn colliding_claims_are_refused_with_both_names() {
        let mut c = Claims::new(["help", "who"]);
        c.add("uptime", &uptime()).unwrap();
        let e = c
            .add("other", &Manifest::new().msg_type(1000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other") && e.contains("uptime") && e.contains("msg_type 1000"),
            "{e}"
        );
        let e = c
            .add(
                "clock",
                &Manifest::new().msg_type(1001).command("uptime", "", ""),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("command /uptime") && e.contains("uptime"), "{e}");
        let e = c
            .add("helper", &Manifest::new().command("help", "", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the node"), "{e}");
        assert!(matches!(
            c.add("uptime", &Manifest::new()),
            Err(PluginError::Duplicate(_))
        ));
        c.add("files", &Manifest::new().desired_prefix("files/"))
            .unwrap();
        assert!(
            c.add("files2", &Manifest::new().desired_prefix("files/"))
                .is_err()
        );
        // A refused plugin added nothing: its other claims stay free.
        c.add(
            "late",
            &Manifest::new().msg_type(1001).command("late", "", ""),
        )
        .unwrap();
    }

    #[test]
    fn event_kinds_round_trip_their_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
        let m: Manifest =
            serde_json::from_str(r#"{"events":["chat","members"],"msg_types":[1200]}"#).unwrap();
        assert_eq!(m.events, [EventKind::Chat, EventKind::Members]);
    }
}
