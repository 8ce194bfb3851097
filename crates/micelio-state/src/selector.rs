//! Selectors: which nodes a desired-state rule, or a `/nodes` listing,
//! applies to.
//!
//! Grammar (no whitespace anywhere inside a selector; tag syntax as in
//! [`crate::tags`]):
//!
//! ```text
//! selector = "*" | conjunction | "node:" node ;
//! conjunction = term { "+" term } ;
//! term = tag | "!" tag ;
//! node = 1*255 ( any character but whitespace, control characters and "/" ) ;
//! ```
//!
//! - `*` matches every node.
//! - A conjunction (`EU`, `EU+prod`, `prod+!canary`, `!canary`) matches the
//!   nodes that carry every plain tag and none of the `!` tags. Repeated
//!   terms collapse; a tag both required and excluded (`a+!a`) is an error,
//!   since it matches no node.
//! - `node:<x>` matches the node whose name is `x`, or, when `x` is 8 to 64
//!   lowercase hex digits, the node whose NodeId starts with `x`. Everything
//!   after `node:` is `x` (a `+` there is part of the name).
//! - `*` and `node:` do not combine with `+`.
//!
//! [`Selector`]'s [`Display`](std::fmt::Display) is canonical (plain tags
//! sorted, then `!` tags sorted), and parsing it gives the same selector.
//!
//! Specificity ([`Selector::specificity`]): `node:` is more specific than
//! any conjunction, a conjunction with more plain tags is more specific than
//! one with fewer (a conjunction of `!` tags only counts zero), and `*` is
//! the least specific. Equal specificity is resolved by the caller, by the
//! LWW order of the entries.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::tags::{MAX_TAG_LEN, is_tag_char, is_tag_start};

/// Longest node name or NodeId prefix after `node:`, in bytes.
pub const MAX_NODE_LEN: usize = 255;

/// Shortest NodeId prefix `node:` matches against NodeIds, in hex digits
/// (a NodeId is 64).
pub const MIN_ID_PREFIX: usize = 8;

/// Length of a NodeId in hex digits.
const ID_HEX_LEN: usize = 64;

/// The prefix of a one-node selector.
const NODE_PREFIX: &str = "node:";

/// A parsed selector ([module docs](crate::selector) for the grammar).
///
/// Values from [`Selector::parse`] keep `with` and `without` sorted and
/// free of duplicates, so equal selectors compare equal; values built by
/// hand must keep that too (and the grammar's other rules) for
/// [`Display`](fmt::Display) to re-parse.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `*`: every node.
    All,
    /// A conjunction of tags: the nodes carrying every tag of `with` and
    /// none of `without`.
    Tags {
        /// Tags a node must carry (sorted, no duplicates).
        with: Vec<String>,
        /// Tags a node must not carry (sorted, no duplicates, none in
        /// `with`).
        without: Vec<String>,
    },
    /// `node:<x>`: the node named `x`, or whose NodeId starts with `x` when
    /// `x` is 8 to 64 lowercase hex digits.
    Node(String),
}

/// What a selector is matched against: one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The node's NodeId, 64 lowercase hex digits.
    pub node_id: &'a str,
    /// The node's name.
    pub name: &'a str,
    /// The node's tags.
    pub tags: &'a [String],
}

/// How specific a selector is; the more specific of two matching rules
/// wins.
///
/// The order is total: `*` < a conjunction of `!` tags only < one with 1
/// plain tag < 2 plain tags < … < `node:`. Its [`Display`](fmt::Display)
/// is `*`, `negations only`, `1 tag`, `3 tags` or `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity(Rank);

/// The order of [`Specificity`]: variants from least to most specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Rank {
    All,
    /// The number of plain (required) tags.
    Tags(usize),
    Node,
}

impl fmt::Display for Specificity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Rank::All => f.write_str("*"),
            Rank::Tags(0) => f.write_str("negations only"),
            Rank::Tags(1) => f.write_str("1 tag"),
            Rank::Tags(n) => write!(f, "{n} tags"),
            Rank::Node => f.write_str("node"),
        }
    }
}

/// A selector that does not parse: the input, the byte offset of the bad
/// character or term, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad selector {input:?} at byte {at}: {reason}")]
#[non_exhaustive]
pub struct SelectorError {
    /// The selector as given.
    pub input: String,
    /// Byte offset in `input` of the bad character or term (`input.len()`
    /// when something is missing at the end).
    pub at: usize,
    /// What is wrong there.
    pub reason: SelectorErrorKind,
}

/// What is wrong in a [`SelectorError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorErrorKind {
    /// The selector is the empty string.
    #[error(
        "the selector is empty: use '*', tags joined by '+' ('!' before a tag excludes it), \
         or node:<name or NodeId prefix>"
    )]
    Empty,
    /// A term between `+` is empty (`EU++prod`, or a `+` at either end).
    #[error("empty term: '+' goes between two tags")]
    EmptyTerm,
    /// A tag holds a character that is not allowed in tags.
    #[error("{ch:?} is not allowed in a tag (letters, digits, '-', '_', '.')")]
    BadChar {
        /// The character.
        ch: char,
    },
    /// A tag starts with `-`, `_` or `.`.
    #[error("a tag starts with a letter or a digit, not {ch:?}")]
    BadStart {
        /// Its first character.
        ch: char,
    },
    /// A tag is longer than [`MAX_TAG_LEN`] bytes.
    #[error("tag of {len} bytes is over the limit of {MAX_TAG_LEN} bytes")]
    TagTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// A `!` with no tag after it.
    #[error("'!' must be followed by a tag")]
    BareNegation,
    /// A second `!` (`!!x`).
    #[error("a second '!': a tag is excluded with a single '!'")]
    DoubleNegation,
    /// `*` with other terms (`*+EU`).
    #[error("'*' selects every node and does not combine with '+'")]
    StarCombined,
    /// `node:` after other terms (`EU+node:x`).
    #[error("node: selects one node and does not combine with '+'")]
    NodeCombined,
    /// A tag both required and excluded (`a+!a`).
    #[error("tag {tag:?} is both required and excluded: the selector matches no node")]
    Contradiction {
        /// The tag.
        tag: String,
    },
    /// Nothing after `node:`.
    #[error("node: must be followed by a node name or a NodeId prefix")]
    EmptyNode,
    /// The name after `node:` is longer than [`MAX_NODE_LEN`] bytes.
    #[error("node name of {len} bytes is over the limit of {MAX_NODE_LEN} bytes")]
    NodeTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The name after `node:` holds whitespace, a control character or `/`.
    #[error(
        "{ch:?} is not allowed in a node name or NodeId prefix \
         (no whitespace, control characters or '/')"
    )]
    NodeBadChar {
        /// The character.
        ch: char,
    },
}

/// A fault at a byte offset, before the input is attached.
type Fault = (usize, SelectorErrorKind);

impl Selector {
    /// Parses a selector ([module docs](crate::selector) for the grammar). The
    /// error's offset points at the first bad character or term, from the
    /// left.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        parse_inner(s).map_err(|(at, reason)| SelectorError {
            input: s.to_owned(),
            at,
            reason,
        })
    }

    /// Whether the selector selects `node`.
    pub fn matches(&self, node: &Target<'_>) -> bool {
        match self {
            Selector::All => true,
            Selector::Tags { with, without } => {
                with.iter().all(|t| node.tags.contains(t))
                    && !without.iter().any(|t| node.tags.contains(t))
            }
            Selector::Node(x) => {
                node.name == x || (is_id_prefix(x) && node.node_id.starts_with(x.as_str()))
            }
        }
    }

    /// How specific the selector is ([`Specificity`]).
    pub fn specificity(&self) -> Specificity {
        Specificity(match self {
            Selector::All => Rank::All,
            Selector::Tags { with, .. } => Rank::Tags(with.len()),
            Selector::Node(_) => Rank::Node,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("*"),
            Selector::Node(x) => write!(f, "{NODE_PREFIX}{x}"),
            Selector::Tags { with, without } => {
                // Sorted again so that the form stays canonical even for a
                // hand-built value.
                let with: BTreeSet<&str> = with.iter().map(String::as_str).collect();
                let without: BTreeSet<&str> = without.iter().map(String::as_str).collect();
                let mut first = true;
                for (neg, tag) in with
                    .iter()
                    .map(|t| ("", t))
                    .chain(without.iter().map(|t| ("!", t)))
                {
                    if !first {
                        f.write_str("+")?;
                    }
                    first = false;
                    write!(f, "{neg}{tag}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// Whether `x` is a NodeId prefix `node:` compares against NodeIds: 8 to
/// 64 lowercase hex digits.
fn is_id_prefix(x: &str) -> bool {
    (MIN_ID_PREFIX..=ID_HEX_LEN).contains(&x.len())
        && x.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_inner(s: &str) -> Result<Selector, Fault> {
    if s.is_empty() {
        return Err((0, SelectorErrorKind::Empty));
    }
    if s == "*" {
        return Ok(Selector::All);
    }
    if let Some(x) = s.strip_prefix(NODE_PREFIX) {
        check_node(x, NODE_PREFIX.len())?;
        return Ok(Selector::Node(x.to_owned()));
    }
    let mut with = BTreeSet::new();
    let mut without = BTreeSet::new();
    let mut at = 0;
    for term in s.split('+') {
        let start = at;
        at += term.len() + 1;
        if term.is_empty() {
            return Err((start, SelectorErrorKind::EmptyTerm));
        }
        if term == "*" {
            return Err((start, SelectorErrorKind::StarCombined));
        }
        if term.starts_with(NODE_PREFIX) {
            return Err((start, SelectorErrorKind::NodeCombined));
        }
        if let Some(tag) = term.strip_prefix('!') {
            if tag.is_empty() {
                return Err((start, SelectorErrorKind::BareNegation));
            }
            if tag.starts_with('!') {
                return Err((start + 1, SelectorErrorKind::DoubleNegation));
            }
            check_tag_at(tag, start + 1)?;
            if with.contains(tag) {
                return Err(contradiction(start, tag));
            }
            without.insert(tag);
        } else {
            check_tag_at(term, start)?;
            if without.contains(term) {
                return Err(contradiction(start, term));
            }
            with.insert(term);
        }
    }
    Ok(Selector::Tags {
        with: with.into_iter().map(str::to_owned).collect(),
        without: without.into_iter().map(str::to_owned).collect(),
    })
}

fn contradiction(at: usize, tag: &str) -> Fault {
    (
        at,
        SelectorErrorKind::Contradiction {
            tag: tag.to_owned(),
        },
    )
}

/// Checks a tag's syntax (as [`crate::tags::check_tag`], in the same
/// order), for a tag found at byte `base` of the selector. `tag` is not
/// empty.
fn check_tag_at(tag: &str, base: usize) -> Result<(), Fault> {
    if tag.len() > MAX_TAG_LEN {
        return Err((base, SelectorErrorKind::TagTooLong { len: tag.len() }));
    }
    for (i, ch) in tag.char_indices() {
        if !is_tag_char(ch) {
            return Err((base + i, SelectorErrorKind::BadChar { ch }));
        }
        if i == 0 && !is_tag_start(ch) {
            return Err((base, SelectorErrorKind::BadStart { ch }));
        }
    }
    Ok(())
}

/// Checks the name or NodeId prefix after `node:`, found at byte `base`.
fn check_node(x: &str, base: usize) -> Result<(), Fault> {
    if x.is_empty() {
        return Err((base, SelectorErrorKind::EmptyNode));
    }
    if x.len() > MAX_NODE_LEN {
        return Err((base, SelectorErrorKind::NodeTooLong { len: x.len() }));
    }
    for (i, ch) in x.char_indices() {
        if ch.is_whitespace() || ch.is_control() || ch == '/' {
            return Err((base + i, SelectorErrorKind::NodeBadChar { ch }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| (*t).to_owned()).collect()
    }

    fn tags(with: &[&str], without: &[&str]) -> Selector {
        Selector::Tags {
            with: strings(with),
            without: strings(without),
        }
    }

    fn parse(s: &str) -> Selector {
        match Selector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    /// The offset and kind of the error `s` gives.
    fn fault(s: &str) -> (usize, SelectorErrorKind) {
        match Selector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => {
                assert_eq!(e.input, s);
                (e.at, e.reason)
            }
        }
    }

    fn message(s: &str) -> String {
        match Selector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_star() {
        assert_eq!(parse("*"), Selector::All);
        assert_eq!(Selector::All.to_string(), "*");
    }

    #[test]
    fn parses_tags_canonically() {
        assert_eq!(parse("EU"), tags(&["EU"], &[]));
        assert_eq!(parse("prod+EU"), tags(&["EU", "prod"], &[]));
        assert_eq!(parse("prod+!canary"), tags(&["prod"], &["canary"]));
        assert_eq!(parse("!canary"), tags(&[], &["canary"]));
        assert_eq!(parse("!b+a+!c+a+!b"), tags(&["a"], &["b", "c"]));
        assert_eq!(parse("!b+a+!c+a+!b").to_string(), "a+!b+!c");
        assert_eq!(parse("!z+!y").to_string(), "!y+!z");
        // Case-sensitive: two tags.
        assert_eq!(parse("eu+EU"), tags(&["EU", "eu"], &[]));
        assert_eq!(parse("v1.2+eu-west_1"), tags(&["eu-west_1", "v1.2"], &[]));
        assert_eq!(parse(&"a".repeat(64)), tags(&[&"a".repeat(64)], &[]));
    }

    #[test]
    fn parses_node() {
        assert_eq!(parse("node:web-1"), Selector::Node("web-1".into()));
        assert_eq!(parse("node:0123abcd"), Selector::Node("0123abcd".into()));
        // Everything after `node:` is the name.
        assert_eq!(parse("node:a+b"), Selector::Node("a+b".into()));
        assert_eq!(parse("node:*"), Selector::Node("*".into()));
        assert_eq!(parse("node:node:x"), Selector::Node("node:x".into()));
        assert_eq!(parse("node:été"), Selector::Node("été".into()));
        let longest = format!("node:{}", "n".repeat(MAX_NODE_LEN));
        assert_eq!(parse(&longest).to_string(), longest);
        assert_eq!(parse("node:a+b").to_string(), "node:a+b");
    }

    #[test]
    fn from_str_is_parse() {
        assert_eq!("EU+prod".parse::<Selector>(), Selector::parse("EU+prod"));
        assert_eq!("".parse::<Selector>(), Selector::parse(""));
    }

    #[test]
    fn hand_built_display_is_canonical() {
        let sel = Selector::Tags {
            with: strings(&["b", "a", "b"]),
            without: strings(&["d", "c"]),
        };
        assert_eq!(sel.to_string(), "a+b+!c+!d");
    }

    #[test]
    fn error_message_points_at_the_character() {
        assert_eq!(
            message("EU+pr od"),
            "bad selector \"EU+pr od\" at byte 5: ' ' is not allowed in a tag \
             (letters, digits, '-', '_', '.')"
        );
        assert_eq!(
            fault("EU+pr od"),
            (5, SelectorErrorKind::BadChar { ch: ' ' })
        );
    }

    #[test]
    fn error_empty() {
        assert_eq!(fault(""), (0, SelectorErrorKind::Empty));
        assert!(message("").starts_with("bad selector \"\" at byte 0: the selector is empty"));
    }

    #[test]
    fn error_empty_term() {
        assert_eq!(fault("EU++prod"), (3, SelectorErrorKind::EmptyTerm));
        assert_eq!(fault("+EU"), (0, SelectorErrorKind::EmptyTerm));
        assert_eq!(fault("EU+"), (3, SelectorErrorKind::EmptyTerm));
        assert_eq!(fault("+"), (0, SelectorErrorKind::EmptyTerm));
        assert_eq!(fault("a+b+"), (4, SelectorErrorKind::EmptyTerm));
        assert_eq!(
            message("EU++prod"),
            "bad selector \"EU++prod\" at byte 3: empty term: '+' goes between two tags"
        );
    }

    #[test]
    fn error_bad_char() {
        assert_eq!(fault(" EU"), (0, SelectorErrorKind::BadChar { ch: ' ' }));
        assert_eq!(fault("EU "), (2, SelectorErrorKind::BadChar { ch: ' ' }));
        assert_eq!(
            fault("a+b+c:d"),
            (5, SelectorErrorKind::BadChar { ch: ':' })
        );
        assert_eq!(fault("a+!b/c"), (4, SelectorErrorKind::BadChar { ch: '/' }));
        assert_eq!(fault("a+b!"), (3, SelectorErrorKind::BadChar { ch: '!' }));
        assert_eq!(fault("*EU"), (0, SelectorErrorKind::BadChar { ch: '*' }));
        assert_eq!(
            fault("EU,prod"),
            (2, SelectorErrorKind::BadChar { ch: ',' })
        );
        // Byte offsets; a tag is ASCII, so a non-ASCII character is the fault.
        assert_eq!(fault("ab+cé"), (4, SelectorErrorKind::BadChar { ch: 'é' }));
        assert_eq!(fault("aé"), (1, SelectorErrorKind::BadChar { ch: 'é' }));
        assert_eq!(
            message("a\tb"),
            "bad selector \"a\\tb\" at byte 1: '\\t' is not allowed in a tag \
             (letters, digits, '-', '_', '.')"
        );
    }

    #[test]
    fn error_bad_start() {
        assert_eq!(fault("EU+-x"), (3, SelectorErrorKind::BadStart { ch: '-' }));
        assert_eq!(fault("!.x"), (1, SelectorErrorKind::BadStart { ch: '.' }));
        assert_eq!(fault("_"), (0, SelectorErrorKind::BadStart { ch: '_' }));
        assert_eq!(
            message("EU+-x"),
            "bad selector \"EU+-x\" at byte 3: a tag starts with a letter or a digit, not '-'"
        );
    }

    #[test]
    fn error_bare_negation() {
        assert_eq!(fault("!"), (0, SelectorErrorKind::BareNegation));
        assert_eq!(fault("EU+!"), (3, SelectorErrorKind::BareNegation));
        assert_eq!(fault("EU+!+prod"), (3, SelectorErrorKind::BareNegation));
        assert_eq!(
            message("!"),
            "bad selector \"!\" at byte 0: '!' must be followed by a tag"
        );
    }

    #[test]
    fn error_double_negation() {
        assert_eq!(fault("!!x"), (1, SelectorErrorKind::DoubleNegation));
        assert_eq!(fault("a+!!"), (3, SelectorErrorKind::DoubleNegation));
        assert_eq!(
            message("!!x"),
            "bad selector \"!!x\" at byte 1: a second '!': a tag is excluded with a single '!'"
        );
    }

    #[test]
    fn error_star_combined() {
        assert_eq!(fault("*+EU"), (0, SelectorErrorKind::StarCombined));
        assert_eq!(fault("EU+*"), (3, SelectorErrorKind::StarCombined));
        assert_eq!(fault("*+*"), (0, SelectorErrorKind::StarCombined));
        assert_eq!(
            message("*+EU"),
            "bad selector \"*+EU\" at byte 0: '*' selects every node and does not combine with '+'"
        );
    }

    #[test]
    fn error_node_combined() {
        assert_eq!(fault("EU+node:x"), (3, SelectorErrorKind::NodeCombined));
        assert_eq!(fault("!a+node:"), (3, SelectorErrorKind::NodeCombined));
        assert_eq!(
            message("EU+node:x"),
            "bad selector \"EU+node:x\" at byte 3: node: selects one node and does not combine \
             with '+'"
        );
    }

    #[test]
    fn error_node_empty() {
        assert_eq!(fault("node:"), (5, SelectorErrorKind::EmptyNode));
        assert_eq!(
            message("node:"),
            "bad selector \"node:\" at byte 5: node: must be followed by a node name or a NodeId \
             prefix"
        );
    }

    #[test]
    fn error_node_bad_char() {
        assert_eq!(
            fault("node:a/b"),
            (6, SelectorErrorKind::NodeBadChar { ch: '/' })
        );
        assert_eq!(
            fault("node:a b"),
            (6, SelectorErrorKind::NodeBadChar { ch: ' ' })
        );
        assert_eq!(
            fault("node: "),
            (5, SelectorErrorKind::NodeBadChar { ch: ' ' })
        );
        assert_eq!(
            fault("node:é\n"),
            (7, SelectorErrorKind::NodeBadChar { ch: '\n' })
        );
        assert_eq!(
            fault("node:a\u{a0}"),
            (6, SelectorErrorKind::NodeBadChar { ch: '\u{a0}' })
        );
        assert_eq!(
            fault("node:x\u{7f}"),
            (6, SelectorErrorKind::NodeBadChar { ch: '\u{7f}' })
        );
        assert_eq!(
            message("node:a/b"),
            "bad selector \"node:a/b\" at byte 6: '/' is not allowed in a node name or NodeId \
             prefix (no whitespace, control characters or '/')"
        );
    }

    #[test]
    fn error_node_too_long() {
        let s = format!("node:{}", "n".repeat(MAX_NODE_LEN + 1));
        assert_eq!(fault(&s), (5, SelectorErrorKind::NodeTooLong { len: 256 }));
        assert!(
            message(&s)
                .ends_with("at byte 5: node name of 256 bytes is over the limit of 255 bytes")
        );
    }

    #[test]
    fn error_contradiction() {
        let a = SelectorErrorKind::Contradiction { tag: "a".into() };
        assert_eq!(fault("a+!a"), (2, a.clone()));
        assert_eq!(fault("!a+a"), (3, a.clone()));
        assert_eq!(
            fault("b+a+b+!b"),
            (6, SelectorErrorKind::Contradiction { tag: "b".into() })
        );
        assert_eq!(fault("!a+!a+x+a"), (8, a));
        // Case-sensitive: no contradiction.
        assert_eq!(parse("a+!A"), tags(&["a"], &["A"]));
        assert_eq!(
            message("a+!a"),
            "bad selector \"a+!a\" at byte 2: tag \"a\" is both required and excluded: the \
             selector matches no node"
        );
    }

    #[test]
    fn error_tag_too_long() {
        let long = "a".repeat(MAX_TAG_LEN + 1);
        assert_eq!(
            fault(&format!("EU+{long}")),
            (3, SelectorErrorKind::TagTooLong { len: 65 })
        );
        assert_eq!(
            fault(&format!("EU+!{long}")),
            (4, SelectorErrorKind::TagTooLong { len: 65 })
        );
        assert!(
            message(&long).ends_with("at byte 0: tag of 65 bytes is over the limit of 64 bytes")
        );
    }

    #[test]
    fn errors_report_the_leftmost_fault() {
        assert_eq!(fault("a b+!"), (1, SelectorErrorKind::BadChar { ch: ' ' }));
        assert_eq!(
            fault("a+!a+b c"),
            (2, SelectorErrorKind::Contradiction { tag: "a".into() })
        );
        assert_eq!(fault("+*"), (0, SelectorErrorKind::EmptyTerm));
    }

    #[test]
    fn matches_all_and_tags() {
        let node_tags = strings(&["EU", "prod"]);
        let t = Target {
            node_id: ID,
            name: "web-1",
            tags: &node_tags,
        };
        let none = Target {
            node_id: ID,
            name: "web-1",
            tags: &[],
        };
        assert!(parse("*").matches(&t));
        assert!(parse("*").matches(&none));
        assert!(parse("EU").matches(&t));
        assert!(parse("EU+prod").matches(&t));
        assert!(!parse("EU+prod+canary").matches(&t));
        assert!(!parse("eu").matches(&t));
        assert!(parse("prod+!canary").matches(&t));
        assert!(!parse("prod+!EU").matches(&t));
        assert!(parse("!canary").matches(&t));
        assert!(parse("!canary").matches(&none));
        assert!(!parse("EU").matches(&none));
    }

    #[test]
    fn matches_node_by_name_or_id_prefix() {
        let t = Target {
            node_id: ID,
            name: "web-1",
            tags: &[],
        };
        assert!(parse("node:web-1").matches(&t));
        assert!(!parse("node:web").matches(&t));
        assert!(!parse("node:WEB-1").matches(&t));
        assert!(parse("node:01234567").matches(&t));
        assert!(parse(&format!("node:{ID}")).matches(&t));
        assert!(!parse("node:1234567").matches(&t), "7 digits is too short");
        assert!(!parse("node:0123").matches(&t));
        assert!(!parse("node:0123456789ABCDEF").matches(&t), "uppercase");
        assert!(!parse("node:11234567").matches(&t));
        let longer = format!("node:{ID}0");
        assert!(!parse(&longer).matches(&t));
        // A hex name matches by name too.
        let hex_name = Target {
            node_id: ID,
            name: "deadbeef",
            tags: &[],
        };
        assert!(parse("node:deadbeef").matches(&hex_name));
    }

    #[test]
    fn specificity_order() {
        let order = [
            "*", "!a", "!a+!b+!c", "a", "a+!b+!c", "a+b", "a+b+c", "node:x",
        ];
        let spec: Vec<Specificity> = order.iter().map(|s| parse(s).specificity()).collect();
        assert!(spec[0] < spec[1]);
        assert_eq!(spec[1], spec[2]);
        assert!(spec[2] < spec[3]);
        assert_eq!(spec[3], spec[4]);
        assert!(spec[4] < spec[5]);
        assert!(spec[5] < spec[6]);
        assert!(spec[6] < spec[7]);
        assert_eq!(
            parse("node:x").specificity(),
            parse("node:01234567").specificity()
        );
        // Duplicates collapse before counting.
        assert_eq!(parse("a+a+a").specificity(), parse("b").specificity());
    }

    #[test]
    fn specificity_display() {
        let shown = |s: &str| parse(s).specificity().to_string();
        assert_eq!(shown("*"), "*");
        assert_eq!(shown("!a+!b"), "negations only");
        assert_eq!(shown("a+!b"), "1 tag");
        assert_eq!(shown("a+b+c"), "3 tags");
        assert_eq!(shown("node:x"), "node");
    }

    // Property tests against an independent model.

    const ALPHABET: [&str; 4] = ["a", "b", "c", "d"];

    /// A selector as the model sees it: the terms as written.
    #[derive(Debug, Clone)]
    enum Model {
        All,
        /// (tag, negated), in the order written, repeats allowed.
        Terms(Vec<(&'static str, bool)>),
        Node(String),
    }

    impl Model {
        fn render(&self) -> String {
            match self {
                Model::All => "*".to_owned(),
                Model::Node(x) => format!("node:{x}"),
                Model::Terms(terms) => terms
                    .iter()
                    .map(|(t, neg)| {
                        if *neg {
                            format!("!{t}")
                        } else {
                            (*t).to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("+"),
            }
        }

        /// Whether some tag is both required and excluded.
        fn contradicts(&self) -> bool {
            match self {
                Model::Terms(terms) => terms
                    .iter()
                    .any(|(t, neg)| terms.iter().any(|(u, n)| t == u && neg != n)),
                _ => false,
            }
        }

        fn matches(&self, id: &str, name: &str, tags: &[String]) -> bool {
            match self {
                Model::All => true,
                Model::Terms(terms) => {
                    let have: std::collections::HashSet<&str> =
                        tags.iter().map(String::as_str).collect();
                    terms.iter().all(|(t, neg)| have.contains(t) != *neg)
                }
                Model::Node(x) => {
                    let hex = x.len() >= 8
                        && x.len() <= 64
                        && x.chars()
                            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
                    name == x || (hex && id.get(..x.len()) == Some(x.as_str()))
                }
            }
        }

        /// (class, distinct required tags).
        fn rank(&self) -> (u8, usize) {
            match self {
                Model::All => (0, 0),
                Model::Terms(terms) => {
                    let mut plain: Vec<&str> =
                        terms.iter().filter(|(_, n)| !n).map(|(t, _)| *t).collect();
                    plain.sort_unstable();
                    plain.dedup();
                    (1, plain.len())
                }
                Model::Node(_) => (2, 0),
            }
        }
    }

    fn hex_id() -> impl Strategy<Value = String> {
        // Few distinct leading digits, so that prefixes collide often.
        ("[01]{8}", "[0-9a-f]{56}").prop_map(|(a, b)| a + &b)
    }

    fn node_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-d]{1,3}",
            "[a-z0-9+.:*!-]{1,12}",
            "[01]{8,10}",
            "[01]{8}[0-9a-f]{0,56}",
        ]
    }

    fn model() -> impl Strategy<Value = Model> {
        let term = (prop::sample::select(&ALPHABET[..]), any::<bool>());
        prop_oneof![
            1 => Just(Model::All),
            6 => prop::collection::vec(term, 1..7).prop_map(Model::Terms),
            2 => node_name().prop_map(Model::Node),
        ]
    }

    /// A model that parses (no contradiction), with its selector.
    fn valid() -> impl Strategy<Value = (Model, Selector)> {
        // Each tag gets one polarity, so that few models contradict.
        let terms = (
            prop::array::uniform4(any::<bool>()),
            prop::collection::vec(0..ALPHABET.len(), 1..7),
        )
            .prop_map(|(neg, picks)| {
                Model::Terms(picks.into_iter().map(|i| (ALPHABET[i], neg[i])).collect())
            });
        prop_oneof![
            1 => Just(Model::All),
            6 => terms,
            2 => node_name().prop_map(Model::Node),
        ]
        .prop_filter_map("does not parse", |m| {
            Selector::parse(&m.render()).ok().map(|s| (m, s))
        })
    }

    fn target() -> impl Strategy<Value = (String, String, Vec<String>)> {
        (
            hex_id(),
            node_name(),
            prop::collection::vec(prop::sample::select(&ALPHABET[..]), 0..5),
        )
            .prop_map(|(id, name, tags)| {
                let tags = tags.into_iter().map(str::to_owned).collect();
                (id, name, tags)
            })
    }

    proptest! {
        #[test]
        fn prop_parse_agrees_with_model(m in model()) {
            let input = m.render();
            match Selector::parse(&input) {
                Ok(sel) => prop_assert!(!m.contradicts(), "{input:?} parsed to {sel:?}"),
                Err(e) => {
                    prop_assert!(m.contradicts(), "{input:?}: {e}");
                    prop_assert!(
                        matches!(e.reason, SelectorErrorKind::Contradiction { .. }),
                        "{e}"
                    );
                }
            }
        }

        #[test]
        fn prop_display_round_trips((_m, sel) in valid()) {
            let shown = sel.to_string();
            let again = Selector::parse(&shown);
            prop_assert_eq!(again.as_ref(), Ok(&sel));
            if let Ok(again) = again {
                prop_assert_eq!(again.to_string(), shown);
            }
        }

        #[test]
        fn prop_matches_model(
            (m, sel) in valid(),
            (id, name, tags) in target(),
            aim in 0usize..4,
            cut in 0usize..70,
        ) {
            prop_assert_eq!(
                sel.matches(&Target { node_id: &id, name: &name, tags: &tags }),
                m.matches(&id, &name, &tags),
                "{} on {:?} {:?} {:?}", sel, id, name, tags
            );
            // Aim node selectors at the target: its name, or its id's prefix.
            let x = match aim {
                0 => name.clone(),
                1 => id[..cut.min(64)].to_owned(),
                _ => id[..cut.clamp(8, 64)].to_owned(),
            };
            if let Ok(sel) = Selector::parse(&format!("node:{x}")) {
                let m = Model::Node(x);
                prop_assert_eq!(
                    sel.matches(&Target { node_id: &id, name: &name, tags: &tags }),
                    m.matches(&id, &name, &tags),
                    "{} on {:?} {:?}", sel, id, name
                );
            }
        }

        #[test]
        fn prop_specificity_matches_model((ma, a) in valid(), (mb, b) in valid()) {
            let want: Ordering = ma.rank().cmp(&mb.rank());
            prop_assert_eq!(a.specificity().cmp(&b.specificity()), want, "{} vs {}", a, b);
            prop_assert_eq!(a.specificity() == b.specificity(), want == Ordering::Equal);
        }

        #[test]
        fn prop_random_strings_never_panic(
            parts in prop::collection::vec(
                prop::sample::select(
                    &["+", "!", "*", ":", "/", " ", "a", "b", "node:", "-", "é", "\n"][..]
                ),
                0..14,
            )
        ) {
            let input: String = parts.concat();
            match Selector::parse(&input) {
                Ok(sel) => {
                    let shown = sel.to_string();
                    prop_assert_eq!(Selector::parse(&shown), Ok(sel), "{:?}", input);
                    prop_assert_eq!(parse(&shown).to_string(), shown);
                }
                Err(e) => {
                    prop_assert!(e.at <= input.len(), "{e}");
                    prop_assert!(input.is_char_boundary(e.at), "{e}");
                    prop_assert_eq!(&e.input, &input);
                    let shown = e.to_string();
                    let at = format!(" at byte {}: ", e.at);
                    prop_assert!(shown.contains(&at), "{}", shown);
                }
            }
        }
    }
}
