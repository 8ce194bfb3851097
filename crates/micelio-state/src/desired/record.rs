//! The JSON records under `desired/` and `actual/`, and the key syntax.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Sub-key prefix of desired entries: `desired/<selector>/<key>`.
pub const DESIRED_PREFIX: &str = "desired/";
/// Sub-key prefix of actual entries: `actual/<key>`.
pub const ACTUAL_PREFIX: &str = "actual/";
/// Longest desired key, in bytes (so that `<node_id>/desired/<selector>/`
/// and `<node_id>/actual/` in front of it stay within the 256-byte key
/// limit for selectors up to 54 bytes).
pub const MAX_KEY_LEN: usize = 128;
/// Longest message kept in an actual record, in bytes (the tail is kept).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Why a key, a record or a value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The key is empty.
    #[error("the key is empty")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("the key is {0} bytes, more than {MAX_KEY_LEN}")]
    KeyTooLong(usize),
    /// The key holds whitespace or a control character.
    #[error("the key has {ch:?} at byte {at}: keys have no whitespace or control characters")]
    KeyChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The key starts or ends with `/`, or holds `//`.
    #[error("the key has an empty segment (a leading, trailing or doubled '/')")]
    KeySegment,
    /// The value holds a NUL byte (it could not reach a program's
    /// environment).
    #[error("the value holds a NUL character")]
    Nul,
    /// The record is not the JSON the module writes.
    #[error("not a desired-state record: {0}")]
    Malformed(String),
}

/// Checks a desired key: 1 to [`MAX_KEY_LEN`] bytes, no whitespace or
/// control characters, no empty `/` segment.
///
/// # Errors
/// The first problem found.
pub fn check_key(key: &str) -> Result<(), RecordError> {
    if key.is_empty() {
        return Err(RecordError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(RecordError::KeyTooLong(key.len()));
    }
    if let Some((at, ch)) = key
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(RecordError::KeyChar { ch, at });
    }
    if key.split('/').any(str::is_empty) {
        return Err(RecordError::KeySegment);
    }
    Ok(())
}

/// Who wrote a desired entry, besides its author node (which the entry's
/// signature proves): what the author says about the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// The author node's name when it wrote the entry.
    #[serde(default)]
    pub node_name: String,
    /// The SSH user (empty when written through the API).
    #[serde(default)]
    pub user: String,
    /// The fingerprint of the SSH key the user logged in with
    /// (`SHA256:…`), if any.
    #[serde(default)]
    pub key: String,
    /// When, in Unix seconds (the author's clock).
    #[serde(default)]
    pub at: u64,
}

/// The value of a `desired/<selector>/<key>` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    /// The desired value; `None` for a removal (`/undesire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Set on a removal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Who set it.
    #[serde(default)]
    pub by: Author,
}

impl DesiredRecord {
    /// A record desiring `value`.
    pub fn set(value: impl Into<String>, by: Author) -> Self {
        Self {
            value: Some(value.into()),
            removed: false,
            by,
        }
    }

    /// A removal record.
    pub fn removal(by: Author) -> Self {
        Self {
            value: None,
            removed: true,
            by,
        }
    }

    /// The bytes stored in the map.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a stored record.
    ///
    /// # Errors
    /// [`RecordError::Malformed`] when it is not one, or claims both a value
    /// and a removal, or neither.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let r: Self =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if r.removed == r.value.is_some() {
            return Err(RecordError::Malformed(
                "a record holds a value or is a removal".to_owned(),
            ));
        }
        Ok(r)
    }
}

/// The status of an actual record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActualStatus {
    /// Applied.
    Ok,
    /// The last apply or remove failed (the node retries).
    Error,
    /// No reconciler on the node claims the key.
    Unclaimed,
}

impl ActualStatus {
    /// `ok`, `error` or `unclaimed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Unclaimed => "unclaimed",
        }
    }
}

/// The value of an `actual/<key>` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualRecord {
    /// The value in place, when the record had room for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// SHA-256 (hex) of the value in place, when the value itself did not
    /// fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_sha256: Option<String>,
    /// The desired value this record answers (its SHA-256, hex), so that a
    /// failure can be told apart from a report about an older value.
    #[serde(default)]
    pub desired_sha256: String,
    /// ok, error or unclaimed.
    pub status: ActualStatus,
    /// A message (a command's output tail, an error), at most
    /// [`MAX_MESSAGE_LEN`] bytes.
    #[serde(default)]
    pub message: String,
    /// The reconciler that reported it (empty when unclaimed).
    #[serde(default)]
    pub reconciler: String,
    /// When, in Unix seconds.
    #[serde(default)]
    pub at: u64,
}

/// SHA-256 of `value`, in hex.
pub(crate) fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl ActualRecord {
    /// Whether the value in place is `value`.
    pub fn holds(&self, value: &str) -> bool {
        match (&self.value, &self.value_sha256) {
            (Some(v), _) => v == value,
            (None, Some(h)) => *h == sha256_hex(value),
            (None, None) => false,
        }
    }

    /// Whether this record answers the desired `value`.
    pub fn answers(&self, value: &str) -> bool {
        self.desired_sha256 == sha256_hex(value)
    }

    /// The bytes stored in the map: at most `max` bytes. The message is cut
    /// to its tail first; then, if the value does not fit, its digest
    /// replaces it.
    pub fn encode(&self, max: usize) -> Vec<u8> {
        let mut r = self.clone();
        r.message = tail(&r.message, MAX_MESSAGE_LEN).to_owned();
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        if bytes.len() <= max {
            return bytes;
        }
        if let Some(v) = r.value.take() {
            r.value_sha256 = Some(sha256_hex(&v));
        }
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        if bytes.len() <= max {
            return bytes;
        }
        r.message.clear();
        serde_json::to_vec(&r).unwrap_or_default()
    }

    /// Reads a stored record.
    ///
    /// # Errors
    /// [`RecordError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("files/motd").is_ok());
        assert_eq!(check_key(""), Err(RecordError::EmptyKey));
        assert_eq!(
            check_key("a b"),
            Err(RecordError::KeyChar { ch: ' ', at: 1 })
        );
        assert_eq!(check_key("/a"), Err(RecordError::KeySegment));
        assert_eq!(check_key("a//b"), Err(RecordError::KeySegment));
        assert_eq!(check_key("a/"), Err(RecordError::KeySegment));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(check_key(&long), Err(RecordError::KeyTooLong(129)));
    }

    #[test]
    fn desired_records_round_trip_and_odd_ones_are_refused() {
        let by = Author {
            node_name: "n1".into(),
            user: "alice".into(),
            key: "SHA256:x".into(),
            at: 7,
        };
        let set = DesiredRecord::set("say \"hi\"\n$(rm -rf /)", by.clone());
        assert_eq!(DesiredRecord::decode(&set.encode()), Ok(set));
        let gone = DesiredRecord::removal(by);
        assert_eq!(DesiredRecord::decode(&gone.encode()), Ok(gone));
        for bad in [
            &br#"{"by":{}}"#[..],
            br#"{"value":"x","removed":true}"#,
            b"not json",
            br#"{"value":5}"#,
        ] {
            assert!(DesiredRecord::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_actual_record_fits_its_limit() {
        let mut r = ActualRecord {
            value: Some("v".repeat(3000)),
            value_sha256: None,
            desired_sha256: sha256_hex(&"v".repeat(3000)),
            status: ActualStatus::Ok,
            message: "m".repeat(5000),
            reconciler: "cmd".into(),
            at: 1,
        };
        let small = r.encode(4096);
        let back = ActualRecord::decode(&small).unwrap();
        assert_eq!(back.message.len(), MAX_MESSAGE_LEN);
        assert!(back.holds(&"v".repeat(3000)));
        let tight = r.encode(1500);
        assert!(tight.len() <= 1500, "{}", tight.len());
        let back = ActualRecord::decode(&tight).unwrap();
        assert_eq!(back.value, None);
        assert!(back.holds(&"v".repeat(3000)));
        assert!(!back.holds("other"));
        assert!(back.answers(&"v".repeat(3000)));
        r.value = None;
        assert!(!r.holds(""));
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
