//! Runtime tags: changes an operator makes with `/tag add|del`, kept as
//! additions and removals on top of the configured `node.tags`, in a small
//! JSON file of the data dir, so that they survive a restart while an edit
//! of the configuration still takes effect for the tags it did not touch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// This node's tags and where they come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TagSet {
    /// The tags in force: configured, minus removed, plus added.
    pub tags: Vec<String>,
    /// The configured ones (`node.tags`).
    pub configured: Vec<String>,
    /// Added at runtime.
    pub added: Vec<String>,
    /// Configured ones removed at runtime.
    pub removed: Vec<String>,
}

/// The runtime changes, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Overrides {
    #[serde(default)]
    pub(crate) added: Vec<String>,
    #[serde(default)]
    pub(crate) removed: Vec<String>,
}

impl Overrides {
    /// The tags in force over `configured`.
    pub(crate) fn apply(&self, configured: &[String]) -> TagSet {
        let mut tags: Vec<String> = configured
            .iter()
            .filter(|t| !self.removed.contains(t))
            .cloned()
            .collect();
        for t in &self.added {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        TagSet {
            tags,
            configured: configured.to_vec(),
            added: self.added.clone(),
            removed: self.removed.clone(),
        }
    }

    /// The overrides after adding (`add`) or removing `tag`, given the
    /// configured tags; `None` when nothing changes.
    pub(crate) fn change(&self, configured: &[String], tag: &str, add: bool) -> Option<Self> {
        let now = self.apply(configured).tags.iter().any(|t| t == tag);
        if now == add {
            return None;
        }
        let mut next = self.clone();
        let tag = tag.to_owned();
        if add {
            next.removed.retain(|t| *t != tag);
            if !configured.contains(&tag) {
                next.added.push(tag);
            }
        } else {
            next.added.retain(|t| *t != tag);
            if configured.contains(&tag) {
                next.removed.push(tag);
            }
        }
        Some(next)
    }

    /// Reads `path`; a missing file is no change.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a tags file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes `path` atomically and durably (a temporary file, synced,
    /// renamed over it, the directory synced). Blocking: call it off the
    /// runtime.
    pub(crate) fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write as _;
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let tmp: PathBuf = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(fail)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn changes_are_kept_on_top_of_the_configured_tags() {
        let configured = v(&["EU", "prod"]);
        let o = Overrides::default();
        assert_eq!(o.change(&configured, "EU", true), None);
        let o = o.change(&configured, "canary", true).unwrap();
        let o = o.change(&configured, "prod", false).unwrap();
        assert_eq!(o.change(&configured, "prod", false), None);
        assert_eq!(o.apply(&configured).tags, v(&["EU", "canary"]));
        // An edit of the configuration takes effect for untouched tags.
        assert_eq!(
            o.apply(&v(&["EU", "prod", "db"])).tags,
            v(&["EU", "db", "canary"])
        );
        // Adding back a removed configured tag drops the removal.
        let o = o.change(&configured, "prod", true).unwrap();
        assert_eq!(o.removed, Vec::<String>::new());
        let o = o.change(&configured, "canary", false).unwrap();
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn the_file_round_trips_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        assert_eq!(Overrides::load(&path), Ok(Overrides::default()));
        let o = Overrides {
            added: v(&["a"]),
            removed: v(&["b"]),
        };
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path), Ok(o));
        std::fs::write(&path, b"{nope").unwrap();
        assert!(
            Overrides::load(&path)
                .unwrap_err()
                .contains("not a tags file")
        );
    }
}
