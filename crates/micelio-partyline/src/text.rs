//! Nicks, untrusted text, and how lines look on a terminal.

use std::fmt;

/// Longest nick, in characters.
pub const MAX_NICK_LEN: usize = 24;
/// Longest chat line, in bytes.
pub const MAX_LINE_LEN: usize = 4096;

/// Why a nick is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NickError {
    /// Empty.
    #[error("a nick cannot be empty")]
    Empty,
    /// Too long.
    #[error("a nick is at most {MAX_NICK_LEN} characters")]
    TooLong,
    /// A character outside letters, digits, `_`, `-` and `.`.
    #[error(
        "a nick holds only letters, digits, '_', '-' and '.', and starts with a letter or digit"
    )]
    BadCharacter,
    /// Taken by another session on this node.
    #[error("the nick {0:?} is taken on this node")]
    Taken(String),
}

/// Checks a nick: 1–24 characters, letters, digits, `_`, `-`, `.`, starting
/// with a letter or digit.
///
/// # Errors
/// The rule broken.
pub fn check_nick(nick: &str) -> Result<(), NickError> {
    let mut chars = nick.chars();
    let Some(first) = chars.next() else {
        return Err(NickError::Empty);
    };
    if nick.chars().count() > MAX_NICK_LEN {
        return Err(NickError::TooLong);
    }
    if !first.is_alphanumeric()
        || !chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(NickError::BadCharacter);
    }
    Ok(())
}

/// Turns an SSH user name into a valid nick (dropping what is not allowed;
/// "user" if nothing is left).
pub fn nick_from_user(user: &str) -> String {
    let cleaned: String = user
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .skip_while(|c| !c.is_alphanumeric())
        .take(MAX_NICK_LEN)
        .collect();
    if cleaned.is_empty() {
        "user".to_owned()
    } else {
        cleaned
    }
}

/// Removes control characters (terminal escape sequences included) from
/// untrusted text, keeping tabs as spaces.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// `HH:MM` (UTC) of a unix timestamp.
pub fn clock(unix_secs: u64) -> String {
    let day = unix_secs % 86_400;
    format!("{:02}:{:02}", day / 3600, (day % 3600) / 60)
}

/// One chat line as users see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatView {
    /// The author's nick.
    pub nick: String,
    /// The name of the author's node.
    pub node: String,
    /// The text (for an action, without the `/me `).
    pub text: String,
    /// Unix seconds.
    pub timestamp: u64,
    /// A `/me` action.
    pub action: bool,
    /// A private line (`/msg`).
    pub private: bool,
}

impl fmt::Display for ChatView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = clock(self.timestamp);
        match (self.action, self.private) {
            (true, _) => write!(f, "[{at}] * {}@{} {}", self.nick, self.node, self.text),
            (false, true) => write!(f, "[{at}] *{}@{}* {}", self.nick, self.node, self.text),
            (false, false) => write!(f, "[{at}] <{}@{}> {}", self.nick, self.node, self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_rules() {
        for ok in ["alice", "bob_2", "a", "Zoë", "x-y.z", "1up"] {
            assert_eq!(check_nick(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_nick(""), Err(NickError::Empty));
        assert_eq!(check_nick(&"a".repeat(25)), Err(NickError::TooLong));
        for bad in ["_x", "a b", "a@b", "a/b", "\u{1b}[2J", "-a"] {
            assert_eq!(check_nick(bad), Err(NickError::BadCharacter), "{bad}");
        }
    }

    #[test]
    fn users_become_nicks() {
        assert_eq!(nick_from_user("alice"), "alice");
        assert_eq!(nick_from_user("__root"), "root");
        assert_eq!(nick_from_user("a b@c"), "abc");
        assert_eq!(nick_from_user("@@@"), "user");
        assert_eq!(nick_from_user(&"x".repeat(100)).len(), MAX_NICK_LEN);
        assert!(check_nick(&nick_from_user("ü-ber.")).is_ok());
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(sanitize("hi\u{1b}[2J\u{7}\tthere\r\n"), "hi[2J there");
    }

    #[test]
    fn lines_render() {
        let mut v = ChatView {
            nick: "alice".into(),
            node: "a".into(),
            text: "hello".into(),
            timestamp: 3600 + 61,
            action: false,
            private: false,
        };
        assert_eq!(v.to_string(), "[01:01] <alice@a> hello");
        v.action = true;
        assert_eq!(v.to_string(), "[01:01] * alice@a hello");
        v.action = false;
        v.private = true;
        assert_eq!(v.to_string(), "[01:01] *alice@a* hello");
    }
}
