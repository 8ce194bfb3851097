//! Node tags: their syntax and the list form published in the state map.
//!
//! A tag is 1 to [`MAX_TAG_LEN`] bytes of ASCII letters, digits, `-`, `_`
//! and `.`, and starts with a letter or a digit. Tags are case-sensitive
//! (`EU` and `eu` are two tags). A node carries at most [`MAX_TAGS`] tags,
//! each once.
//!
//! [`check_tag`] and [`check_tags`] check an operator's tags (the node's
//! configuration, the partyline's `/tag add`). [`parse_list`] and
//! [`join_list`] convert between a tag list and the comma-separated value of
//! a node's `node/tags` entry; [`parse_list`] does not validate, since a
//! remote node's tags are data: callers filter them with [`check_tag`] when
//! they need to.

use std::collections::BTreeSet;

/// Most tags a node may carry.
pub const MAX_TAGS: usize = 64;

/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Why a tag, or a node's list of tags, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// The tag is the empty string.
    #[error("empty tag: a tag is 1 to {MAX_TAG_LEN} letters, digits, '-', '_' and '.'")]
    Empty,
    /// The tag is longer than [`MAX_TAG_LEN`] bytes.
    #[error("tag of {len} bytes is over the limit of {MAX_TAG_LEN} bytes")]
    TooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The tag holds a character that is never allowed in a tag.
    #[error("tag {tag:?} has {ch:?} at byte {at}: a tag is letters, digits, '-', '_' and '.'")]
    BadChar {
        /// The tag.
        tag: String,
        /// Byte offset of the character in the tag.
        at: usize,
        /// The character.
        ch: char,
    },
    /// The tag starts with `-`, `_` or `.`, which are allowed only after
    /// its first character.
    #[error("tag {tag:?} starts with {ch:?}: a tag starts with a letter or a digit")]
    BadStart {
        /// The tag.
        tag: String,
        /// Its first character.
        ch: char,
    },
    /// The list holds more than [`MAX_TAGS`] tags.
    #[error("{count} tags is over the limit of {MAX_TAGS} tags")]
    TooMany {
        /// How many tags the list holds.
        count: usize,
    },
    /// The list holds the same tag twice.
    #[error("tag {tag:?} is listed more than once")]
    Duplicate {
        /// The tag.
        tag: String,
    },
}

/// Whether `c` may be the first character of a tag.
pub(crate) fn is_tag_start(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Whether `c` may appear in a tag (after its first character).
pub(crate) fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Checks one tag's syntax.
///
/// The checks run in this order: empty, length, then each character from
/// the first; the first failure is returned. A first character that is
/// never allowed in a tag (a space, `!`, a non-ASCII letter) is reported as
/// [`TagError::BadChar`] at byte 0; one that is allowed only later (`-`,
/// `_`, `.`) as [`TagError::BadStart`].
pub fn check_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong { len: tag.len() });
    }
    for (at, ch) in tag.char_indices() {
        if !is_tag_char(ch) {
            return Err(TagError::BadChar {
                tag: tag.to_owned(),
                at,
                ch,
            });
        }
        if at == 0 && !is_tag_start(ch) {
            return Err(TagError::BadStart {
                tag: tag.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// Checks a node's list of tags: at most [`MAX_TAGS`], each valid
/// ([`check_tag`]), none twice. Returns the first failure, in list order.
pub fn check_tags(tags: &[String]) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany { count: tags.len() });
    }
    let mut seen = BTreeSet::new();
    for tag in tags {
        check_tag(tag)?;
        if !seen.insert(tag.as_str()) {
            return Err(TagError::Duplicate { tag: tag.clone() });
        }
    }
    Ok(())
}

/// Splits a comma-separated tag list (the value of a `node/tags` entry,
/// e.g. `"EU,prod"`) into its tags, each trimmed of surrounding
/// whitespace; empty items are dropped.
///
/// It does not validate the tags, nor remove duplicates: the value may come
/// from any node, and callers apply [`check_tag`] or [`check_tags`] where
/// they need to.
pub fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Joins tags into the comma-separated form [`parse_list`] reads (the
/// value of a `node/tags` entry). An empty list gives the empty string.
pub fn join_list(tags: &[String]) -> String {
    tags.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn good_tags() {
        let longest = "a".repeat(MAX_TAG_LEN);
        for tag in [
            "EU",
            "eu",
            "prod",
            "9",
            "x",
            "eu-west-1",
            "v1.2_rc",
            "0.-_",
            "A-",
            longest.as_str(),
        ] {
            assert_eq!(check_tag(tag), Ok(()), "{tag:?}");
        }
    }

    #[test]
    fn empty_tag() {
        assert_eq!(check_tag(""), Err(TagError::Empty));
    }

    #[test]
    fn too_long_tag() {
        let tag = "a".repeat(MAX_TAG_LEN + 1);
        assert_eq!(check_tag(&tag), Err(TagError::TooLong { len: 65 }));
        // Length is checked before characters.
        let tag = format!("{} b", "a".repeat(MAX_TAG_LEN));
        assert_eq!(check_tag(&tag), Err(TagError::TooLong { len: 66 }));
    }

    #[test]
    fn bad_char() {
        let e = check_tag("e u");
        assert_eq!(
            e,
            Err(TagError::BadChar {
                tag: "e u".into(),
                at: 1,
                ch: ' '
            })
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("tag \"e u\" has ' ' at byte 1: a tag is letters, digits, '-', '_' and '.'".into())
        );
        // The offset is in bytes, and a disallowed first character is a
        // bad character, not a bad start.
        assert_eq!(
            check_tag("éa"),
            Err(TagError::BadChar {
                tag: "éa".into(),
                at: 0,
                ch: 'é'
            })
        );
        assert_eq!(
            check_tag("aé!"),
            Err(TagError::BadChar {
                tag: "aé!".into(),
                at: 1,
                ch: 'é'
            })
        );
        assert_eq!(
            check_tag("ab,c"),
            Err(TagError::BadChar {
                tag: "ab,c".into(),
                at: 2,
                ch: ','
            })
        );
        for bad in ['!', '+', '*', ':', '/', '\n', '\0'] {
            let tag = format!("a{bad}");
            assert_eq!(
                check_tag(&tag),
                Err(TagError::BadChar {
                    tag: tag.clone(),
                    at: 1,
                    ch: bad
                })
            );
        }
        // Control characters are escaped in the message.
        let msg = check_tag("a\nb").map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err(
                "tag \"a\\nb\" has '\\n' at byte 1: a tag is letters, digits, '-', '_' and '.'"
                    .into()
            )
        );
    }

    #[test]
    fn bad_start() {
        for start in ['-', '_', '.'] {
            let tag = format!("{start}eu");
            assert_eq!(
                check_tag(&tag),
                Err(TagError::BadStart {
                    tag: tag.clone(),
                    ch: start
                })
            );
        }
        assert_eq!(
            check_tag("-x").map_err(|e| e.to_string()),
            Err("tag \"-x\" starts with '-': a tag starts with a letter or a digit".into())
        );
    }

    #[test]
    fn tags_are_case_sensitive() {
        assert_eq!(check_tags(&strings(&["EU", "eu", "Eu"])), Ok(()));
    }

    #[test]
    fn check_tags_good() {
        assert_eq!(check_tags(&[]), Ok(()));
        assert_eq!(check_tags(&strings(&["EU", "prod"])), Ok(()));
        let most: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(check_tags(&most), Ok(()));
    }

    #[test]
    fn check_tags_too_many() {
        let tags: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(check_tags(&tags), Err(TagError::TooMany { count: 65 }));
        assert_eq!(
            TagError::TooMany { count: 65 }.to_string(),
            "65 tags is over the limit of 64 tags"
        );
    }

    #[test]
    fn check_tags_duplicate() {
        assert_eq!(
            check_tags(&strings(&["EU", "prod", "EU"])),
            Err(TagError::Duplicate { tag: "EU".into() })
        );
        assert_eq!(
            TagError::Duplicate { tag: "EU".into() }.to_string(),
            "tag \"EU\" is listed more than once"
        );
    }

    #[test]
    fn check_tags_reports_bad_tag() {
        assert_eq!(
            check_tags(&strings(&["EU", "", "EU"])),
            Err(TagError::Empty)
        );
        assert_eq!(
            check_tags(&strings(&["EU", "a b"])),
            Err(TagError::BadChar {
                tag: "a b".into(),
                at: 1,
                ch: ' '
            })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            TagError::Empty.to_string(),
            "empty tag: a tag is 1 to 64 letters, digits, '-', '_' and '.'"
        );
        assert_eq!(
            TagError::TooLong { len: 70 }.to_string(),
            "tag of 70 bytes is over the limit of 64 bytes"
        );
    }

    #[test]
    fn parse_list_splits_trims_and_drops_empty() {
        assert_eq!(parse_list("EU,prod"), strings(&["EU", "prod"]));
        assert_eq!(parse_list(" EU , prod\t"), strings(&["EU", "prod"]));
        assert_eq!(parse_list(",,EU,, ,prod,"), strings(&["EU", "prod"]));
        assert_eq!(parse_list(""), Vec::<String>::new());
        assert_eq!(parse_list(" , "), Vec::<String>::new());
        // No validation, no deduplication, order kept.
        assert_eq!(parse_list("b,a b,b"), strings(&["b", "a b", "b"]));
    }

    #[test]
    fn join_list_joins_with_commas() {
        assert_eq!(join_list(&[]), "");
        assert_eq!(join_list(&strings(&["EU"])), "EU");
        assert_eq!(join_list(&strings(&["EU", "prod"])), "EU,prod");
    }

    #[test]
    fn list_round_trip() {
        let tags = strings(&["EU", "prod", "eu-west.1"]);
        assert_eq!(check_tags(&tags), Ok(()));
        assert_eq!(parse_list(&join_list(&tags)), tags);
    }
}
