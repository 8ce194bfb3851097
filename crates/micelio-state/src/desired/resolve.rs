//! [`Rules`]: the index of desired entries, the effective desired map of a
//! node, and [`drift`]. Pure functions of their inputs: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use micelio_identity::NodeId;
use serde::Serialize;

use super::record::{ActualRecord, ActualStatus, DESIRED_PREFIX, DesiredRecord, check_key};
use crate::members::{Liveness, Member};
use crate::selector::{Selector, Specificity, Target};
use crate::service::Entry;

/// Most desired entries indexed; past it, new ones are ignored (counted)
/// until some are removed. Desired entries are written by operators, so
/// the cap is far above any fleet's need and only stops a flood.
pub const MAX_RULES: usize = 100_000;

/// One desired entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which nodes it is for.
    pub selector: Selector,
    /// The desired key.
    pub key: String,
    /// Its record: the value (or a removal) and who set it.
    pub record: DesiredRecord,
    /// The node that wrote it (proven by the entry's signature).
    pub author: NodeId,
    /// The entry's Lamport timestamp.
    pub ts: u64,
    /// Whether its author is trusted (`[desired] admins`).
    pub trusted: bool,
}

impl Rule {
    /// Its place in the LWW order.
    fn order(&self) -> (u64, NodeId) {
        (self.ts, self.author)
    }
}

/// A desired entry as the audit trail lists it ([`Rules::all`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The entry.
    pub rule: Rule,
    /// Whether it decides its selector and key: the trusted entry highest
    /// in the LWW order (a removal, when the key was withdrawn).
    pub in_force: bool,
}

/// The value one node should have for one key, and the rule it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// The desired value.
    pub value: String,
    /// The winning rule's selector (canonical form).
    pub selector: String,
    /// Its author.
    #[serde(serialize_with = "hex_id")]
    pub author: NodeId,
    /// Its Lamport timestamp.
    pub ts: u64,
}

fn hex_id<S: serde::Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// What is wrong with one key of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftKind {
    /// Desired, and the node has not reported it (yet, or at all).
    Missing,
    /// No reconciler on the node claims the key.
    Unclaimed,
    /// The node's reconciler failed; the message says why.
    Failed,
    /// The node reports another value than the desired one.
    Differs,
    /// Not desired any more, and the node still reports it.
    Stale,
}

impl DriftKind {
    /// Its name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unclaimed => "unclaimed",
            Self::Failed => "failed",
            Self::Differs => "differs",
            Self::Stale => "stale",
        }
    }
}

/// One drifting key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftItem {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub kind: DriftKind,
    /// The desired value (none for [`DriftKind::Stale`]).
    pub desired: Option<String>,
    /// The value the node reports, if it reported one that fits.
    pub actual: Option<String>,
    /// The node's message (for a failure, why).
    pub message: String,
}

/// One node's drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeDrift {
    /// The node.
    #[serde(serialize_with = "hex_id")]
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Its liveness (a dead node is listed even when its last report
    /// matched: nobody knows what it holds now).
    pub liveness: &'static str,
    /// Its drifting keys.
    pub items: Vec<DriftItem>,
}

/// The index of desired entries, by selector and key, then author.
#[derive(Debug, Default)]
pub struct Rules {
    by_rule: BTreeMap<(String, String), HashMap<NodeId, Rule>>,
    /// Full entry key → (selector, key), to find an entry's rule again.
    by_entry: HashMap<String, (String, String)>,
    admins: Option<BTreeSet<NodeId>>,
    malformed: u64,
    overflow: u64,
}

/// Why [`Rules::parse`] refused an entry.
fn parse_sub(sub: &str) -> Result<(Selector, &str), String> {
    let rest = sub
        .strip_prefix(DESIRED_PREFIX)
        .ok_or_else(|| "not under desired/".to_owned())?;
    let (sel, key) = rest
        .split_once('/')
        .ok_or_else(|| "no key after the selector".to_owned())?;
    let selector = Selector::parse(sel).map_err(|e| e.to_string())?;
    if selector.to_string() != sel {
        return Err(format!("selector {sel:?} is not in canonical form"));
    }
    check_key(key).map_err(|e| e.to_string())?;
    Ok((selector, key))
}

impl Rules {
    /// An empty index; `admins`, when set, are the only trusted authors.
    pub fn new(admins: Option<BTreeSet<NodeId>>) -> Self {
        Self {
            admins,
            ..Self::default()
        }
    }

    /// Decodes a `desired/` entry into a rule.
    ///
    /// # Errors
    /// Why it is not a valid desired entry.
    pub fn parse(&self, entry: &Entry) -> Result<Rule, String> {
        let (selector, key) = parse_sub(entry.sub_key())?;
        let record = DesiredRecord::decode(&entry.value).map_err(|e| e.to_string())?;
        Ok(Rule {
            selector,
            key: key.to_owned(),
            record,
            author: entry.author,
            ts: entry.ts,
            trusted: self.trusts(&entry.author),
        })
    }

    /// Whether entries of `author` count.
    pub fn trusts(&self, author: &NodeId) -> bool {
        self.admins.as_ref().is_none_or(|a| a.contains(author))
    }

    /// Takes in a changed entry of the map (any key: others are ignored).
    /// Returns whether the index changed. Tombstones remove the entry's
    /// rule; malformed entries are counted and dropped.
    pub fn observe(&mut self, entry: &Entry) -> Result<bool, String> {
        if !entry.sub_key().starts_with(DESIRED_PREFIX) {
            return Ok(false);
        }
        let old = self.by_entry.get(&entry.key).cloned();
        if entry.deleted {
            return Ok(self.forget(&entry.key, old, entry.author));
        }
        let rule = match self.parse(entry) {
            Ok(r) => r,
            Err(e) => {
                self.malformed += 1;
                self.forget(&entry.key, old, entry.author);
                return Err(e);
            }
        };
        if old.is_none() && self.by_entry.len() >= MAX_RULES {
            self.overflow += 1;
            return Err(format!("more than {MAX_RULES} desired entries"));
        }
        let id = (rule.selector.to_string(), rule.key.clone());
        let author = rule.author;
        self.by_entry.insert(entry.key.clone(), id.clone());
        let slot = self.by_rule.entry(id).or_default();
        let changed = slot.get(&author) != Some(&rule);
        slot.insert(author, rule);
        Ok(changed)
    }

    fn forget(&mut self, key: &str, at: Option<(String, String)>, author: NodeId) -> bool {
        let Some(id) = at else { return false };
        self.by_entry.remove(key);
        let Some(slot) = self.by_rule.get_mut(&id) else {
            return false;
        };
        let removed = slot.remove(&author).is_some();
        if slot.is_empty() {
            self.by_rule.remove(&id);
        }
        removed
    }

    /// Every indexed entry, by selector and key, newest author first, each
    /// marked if it is the one in force.
    pub fn all(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        for slot in self.by_rule.values() {
            let mut rules: Vec<_> = slot.values().cloned().collect();
            rules.sort_by_key(|r| std::cmp::Reverse(r.order()));
            let mut decided = false;
            for rule in rules {
                let in_force = rule.trusted && !decided;
                decided |= in_force;
                out.push(Listed { rule, in_force });
            }
        }
        out
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.by_entry.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_entry.is_empty()
    }

    /// Entries held whose author is not trusted.
    pub fn untrusted(&self) -> u64 {
        self.by_rule
            .values()
            .flat_map(HashMap::values)
            .filter(|r| !r.trusted)
            .count() as u64
    }

    /// Malformed entries seen.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Entries ignored because the index was full.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// The rule in force for each selector and key: the trusted entry
    /// highest in the LWW order, unless it is a removal.
    fn in_force(&self) -> impl Iterator<Item = &Rule> {
        self.by_rule.values().filter_map(|slot| {
            slot.values()
                .filter(|r| r.trusted)
                .max_by_key(|r| r.order())
                .filter(|r| !r.record.removed && r.record.value.is_some())
        })
    }

    /// The rule in force for `selector` (canonical form) and `key`, if
    /// any.
    pub fn in_force_for(&self, selector: &str, key: &str) -> Option<&Rule> {
        self.by_rule
            .get(&(selector.to_owned(), key.to_owned()))?
            .values()
            .filter(|r| r.trusted)
            .max_by_key(|r| r.order())
            .filter(|r| !r.record.removed)
    }

    /// The effective desired map of `node`: for each key, the value of the
    /// most specific rule in force whose selector matches it (equal
    /// specificity: the LWW order).
    pub fn effective(&self, node: &Target<'_>) -> BTreeMap<String, Effective> {
        let mut best: BTreeMap<&str, (Specificity, (u64, NodeId), &Rule)> = BTreeMap::new();
        for rule in self.in_force() {
            if !rule.selector.matches(node) {
                continue;
            }
            let rank = (rule.selector.specificity(), rule.order());
            match best.get(rule.key.as_str()) {
                Some((s, o, _)) if (*s, *o) >= rank => {}
                _ => {
                    best.insert(&rule.key, (rank.0, rank.1, rule));
                }
            }
        }
        best.into_iter()
            .map(|(key, (_, _, r))| {
                (
                    key.to_owned(),
                    Effective {
                        value: r.record.value.clone().unwrap_or_default(),
                        selector: r.selector.to_string(),
                        author: r.author,
                        ts: r.ts,
                    },
                )
            })
            .collect()
    }
}

/// The target of a member, for selector matching.
pub(crate) fn target_of(m: &Member) -> (String, &str, &[String]) {
    (m.node_id.to_hex(), m.name.as_str(), m.tags.as_slice())
}

/// The drift of `member` given its effective desired map and the actual
/// records it published (by key).
fn node_drift(
    member: &Member,
    want: &BTreeMap<String, Effective>,
    actual: &BTreeMap<String, ActualRecord>,
) -> NodeDrift {
    let mut items = Vec::new();
    for (key, e) in want {
        let item = |kind, a: Option<&ActualRecord>| DriftItem {
            key: key.clone(),
            kind,
            desired: Some(e.value.clone()),
            actual: a.and_then(|a| a.value.clone()),
            message: a.map(|a| a.message.clone()).unwrap_or_default(),
        };
        match actual.get(key) {
            None => items.push(item(DriftKind::Missing, None)),
            Some(a) if a.status == ActualStatus::Unclaimed => {
                items.push(item(DriftKind::Unclaimed, Some(a)));
            }
            Some(a) if a.status == ActualStatus::Error => {
                items.push(item(DriftKind::Failed, Some(a)));
            }
            Some(a) if !a.holds(&e.value) => items.push(item(DriftKind::Differs, Some(a))),
            Some(_) => {}
        }
    }
    for (key, a) in actual {
        if !want.contains_key(key) {
            items.push(DriftItem {
                key: key.clone(),
                kind: DriftKind::Stale,
                desired: None,
                actual: a.value.clone(),
                message: a.message.clone(),
            });
        }
    }
    NodeDrift {
        node_id: member.node_id,
        name: member.name.clone(),
        liveness: member.liveness.label(),
        items,
    }
}

/// The drift of every member `filter` matches (every member when `None`),
/// given `actuals` (each node's actual records by key): one [`NodeDrift`]
/// per node that drifts or is dead or suspect with something desired;
/// members that left are skipped. Empty when the fleet has converged.
pub fn drift(
    rules: &Rules,
    members: &[Member],
    actuals: &HashMap<NodeId, BTreeMap<String, ActualRecord>>,
    filter: Option<&Selector>,
) -> Vec<NodeDrift> {
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for m in members {
        if m.liveness == Liveness::Left {
            continue;
        }
        let (hex, name, tags) = target_of(m);
        let target = Target {
            node_id: &hex,
            name,
            tags,
        };
        if filter.is_some_and(|f| !f.matches(&target)) {
            continue;
        }
        let want = rules.effective(&target);
        let d = node_drift(m, &want, actuals.get(&m.node_id).unwrap_or(&empty));
        let unsure = matches!(m.liveness, Liveness::Dead | Liveness::Suspect) && !want.is_empty();
        if !d.items.is_empty() || unsure {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::desired::record::{Author, sha256_hex};

    fn id(n: u8) -> NodeId {
        NodeId::from_public_key_bytes(&[n; 32])
    }

    fn desired(author: u8, ts: u64, sel: &str, key: &str, value: Option<&str>) -> Entry {
        let rec = match value {
            Some(v) => DesiredRecord::set(v, Author::default()),
            None => DesiredRecord::removal(Author::default()),
        };
        Entry {
            key: format!("{}/desired/{sel}/{key}", id(author).to_hex()),
            value: Bytes::from(rec.encode()),
            author: id(author),
            ts,
            deleted: false,
        }
    }

    fn target<'a>(hex: &'a str, name: &'a str, tags: &'a [String]) -> Target<'a> {
        Target {
            node_id: hex,
            name,
            tags,
        }
    }

    fn values(rules: &Rules, name: &str, tags: &[&str]) -> BTreeMap<String, String> {
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        let hex = id(200).to_hex();
        rules
            .effective(&target(&hex, name, &tags))
            .into_iter()
            .map(|(k, e)| (k, e.value))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_most_specific_rule_wins_and_ties_go_to_lww() {
        let mut r = Rules::new(None);
        for e in [
            desired(1, 10, "*", "motd", Some("all")),
            desired(1, 11, "EU", "motd", Some("eu")),
            desired(2, 5, "EU+prod", "motd", Some("eu-prod")),
            desired(1, 12, "node:web1", "motd", Some("web1")),
            desired(1, 13, "prod", "tz", Some("utc")),
            desired(2, 14, "EU", "tz", Some("cet")),
        ] {
            r.observe(&e).unwrap();
        }
        assert_eq!(values(&r, "x", &[]), map(&[("motd", "all")]));
        assert_eq!(
            values(&r, "x", &["EU"]),
            map(&[("motd", "eu"), ("tz", "cet")])
        );
        // More tags beat fewer even when older.
        assert_eq!(
            values(&r, "x", &["EU", "prod"]),
            map(&[("motd", "eu-prod"), ("tz", "cet")])
        );
        assert_eq!(
            values(&r, "web1", &["EU", "prod"]),
            map(&[("motd", "web1"), ("tz", "cet")])
        );
    }

    #[test]
    fn a_removal_by_another_author_wins_by_lww_and_a_newer_set_brings_it_back() {
        let mut r = Rules::new(None);
        r.observe(&desired(1, 10, "EU", "motd", Some("a"))).unwrap();
        r.observe(&desired(1, 1, "*", "motd", Some("base")))
            .unwrap();
        r.observe(&desired(2, 11, "EU", "motd", None)).unwrap();
        // The EU rule is gone; the * rule applies again.
        assert_eq!(values(&r, "x", &["EU"]), map(&[("motd", "base")]));
        r.observe(&desired(1, 12, "EU", "motd", Some("b"))).unwrap();
        assert_eq!(values(&r, "x", &["EU"]), map(&[("motd", "b")]));
        // A tombstone of author 1's entry leaves author 2's removal.
        let mut gone = desired(1, 13, "EU", "motd", Some("b"));
        gone.deleted = true;
        assert!(r.observe(&gone).unwrap());
        assert_eq!(values(&r, "x", &["EU"]), map(&[("motd", "base")]));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn with_admins_only_their_entries_count() {
        let mut r = Rules::new(Some([id(1)].into()));
        r.observe(&desired(1, 10, "*", "motd", Some("admin")))
            .unwrap();
        r.observe(&desired(2, 20, "*", "motd", Some("intruder")))
            .unwrap();
        r.observe(&desired(2, 21, "*", "evil", Some("x"))).unwrap();
        assert_eq!(values(&r, "x", &[]), map(&[("motd", "admin")]));
        assert_eq!(r.untrusted(), 2);
        // A removal from a non-admin does not remove either.
        r.observe(&desired(3, 30, "*", "motd", None)).unwrap();
        assert_eq!(values(&r, "x", &[]), map(&[("motd", "admin")]));
    }

    #[test]
    fn the_audit_trail_marks_the_entry_in_force() {
        let mut r = Rules::new(Some([id(1), id(2)].into()));
        r.observe(&desired(1, 10, "*", "motd", Some("old")))
            .unwrap();
        r.observe(&desired(2, 11, "*", "motd", Some("new")))
            .unwrap();
        // Newer, but not trusted: listed, never in force.
        r.observe(&desired(3, 12, "*", "motd", Some("intruder")))
            .unwrap();
        r.observe(&desired(1, 5, "EU", "tz", Some("cet"))).unwrap();
        r.observe(&desired(2, 6, "EU", "tz", None)).unwrap();
        let listed: Vec<(String, u64, bool)> = r
            .all()
            .into_iter()
            .map(|l| (l.rule.key.clone(), l.rule.ts, l.in_force))
            .collect();
        let mut by_key = listed.clone();
        by_key.sort();
        assert_eq!(
            by_key,
            [
                ("motd".to_owned(), 10, false),
                ("motd".to_owned(), 11, true),
                ("motd".to_owned(), 12, false),
                ("tz".to_owned(), 5, false),
                // A removal that decides its key is the one in force.
                ("tz".to_owned(), 6, true),
            ]
        );
        // Newest first within each selector and key.
        let motd: Vec<u64> = listed
            .iter()
            .filter(|l| l.0 == "motd")
            .map(|l| l.1)
            .collect();
        assert_eq!(motd, [12, 11, 10]);
    }

    #[test]
    fn malformed_entries_are_refused_and_counted() {
        let mut r = Rules::new(None);
        let mut bad = desired(1, 1, "EU", "k", Some("v"));
        bad.value = Bytes::from_static(b"{oops");
        assert!(r.observe(&bad).is_err());
        // Non-canonical selector, bad selector, bad key.
        for sub in [
            "desired/prod+EU/k",
            "desired/E U/k",
            "desired/EU/",
            "desired/EU",
        ] {
            let mut e = desired(1, 1, "EU", "k", Some("v"));
            e.key = format!("{}/{sub}", id(1).to_hex());
            assert!(r.observe(&e).is_err(), "{sub}");
        }
        assert_eq!(r.malformed(), 5);
        assert!(r.is_empty());
        // Other keys are none of its business.
        let mut other = desired(1, 1, "EU", "k", Some("v"));
        other.key = format!("{}/color", id(1).to_hex());
        assert_eq!(r.observe(&other), Ok(false));
    }

    fn member(n: u8, name: &str, tags: &[&str], liveness: Liveness) -> Member {
        Member {
            node_id: id(n),
            name: name.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            addr: String::new(),
            version: String::new(),
            heartbeat: 1,
            last_heartbeat: None,
            liveness,
            is_self: false,
        }
    }

    fn actual(value: &str, status: ActualStatus, message: &str) -> ActualRecord {
        ActualRecord {
            value: Some(value.into()),
            value_sha256: None,
            desired_sha256: sha256_hex(value),
            status,
            message: message.into(),
            reconciler: "cmd".into(),
            at: 1,
        }
    }

    #[test]
    fn drift_lists_each_kind_and_is_empty_once_converged() {
        let mut r = Rules::new(None);
        r.observe(&desired(1, 10, "EU", "motd", Some("hi")))
            .unwrap();
        let members = vec![
            member(11, "ok", &["EU"], Liveness::Alive),
            member(12, "missing", &["EU"], Liveness::Alive),
            member(13, "failed", &["EU"], Liveness::Alive),
            member(14, "differs", &["EU"], Liveness::Alive),
            member(15, "unclaimed", &["EU"], Liveness::Alive),
            member(16, "stale", &["US"], Liveness::Alive),
            member(17, "dead", &["EU"], Liveness::Dead),
            member(18, "left", &["EU"], Liveness::Left),
        ];
        let one = |a: ActualRecord| BTreeMap::from([("motd".to_owned(), a)]);
        let mut actuals = HashMap::from([
            (id(11), one(actual("hi", ActualStatus::Ok, ""))),
            (id(13), one(actual("", ActualStatus::Error, "exit 3: nope"))),
            (id(14), one(actual("bye", ActualStatus::Ok, ""))),
            (id(15), one(actual("", ActualStatus::Unclaimed, ""))),
            (id(16), one(actual("hi", ActualStatus::Ok, ""))),
            (id(17), one(actual("hi", ActualStatus::Ok, ""))),
        ]);
        let d = drift(&r, &members, &actuals, None);
        let got: Vec<_> = d
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.items.iter().map(|i| i.kind).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("missing", vec![DriftKind::Missing]),
                ("failed", vec![DriftKind::Failed]),
                ("differs", vec![DriftKind::Differs]),
                ("unclaimed", vec![DriftKind::Unclaimed]),
                ("stale", vec![DriftKind::Stale]),
                ("dead", vec![]),
            ]
        );
        assert_eq!(d[1].items[0].message, "exit 3: nope");
        let eu = Selector::parse("EU").unwrap();
        assert_eq!(drift(&r, &members, &actuals, Some(&eu)).len(), 5);
        // Converged: everyone reports the value, nobody is dead.
        for n in [12, 13, 14, 15] {
            actuals.insert(id(n), one(actual("hi", ActualStatus::Ok, "")));
        }
        actuals.remove(&id(16));
        let members: Vec<_> = members
            .into_iter()
            .filter(|m| m.liveness != Liveness::Dead)
            .collect();
        assert_eq!(drift(&r, &members, &actuals, None), vec![]);
    }
}
