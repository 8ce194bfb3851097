//! The line protocol of external plugins, without I/O: JSON-RPC 2.0
//! messages, one per line, both ways (see `docs/plugins.md`).
//!
//! [`parse_line`] classifies one line from a plugin (a request, a
//! notification or a response) or says why it is not acceptable;
//! [`Outgoing`] builds the node's lines. Binary values travel in base64
//! (`*_b64` fields); text values also as plain strings where they are
//! UTF-8.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::Event;

/// The protocol version this node speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest line accepted from a plugin, in bytes (without the newline);
/// a longer one is skipped and reported.
pub const MAX_LINE: usize = 1 << 20;

/// JSON-RPC error code: the line is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC error code: JSON, but not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error code: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC error code: the parameters are wrong.
pub const INVALID_PARAMS: i64 = -32602;
/// Error code: the plugin may not do this (a type it does not own, a key
/// outside its prefix, a request before `initialized`).
pub const FORBIDDEN: i64 = -32001;
/// Error code: the node refused or failed (state limits, queue full).
pub const NODE_ERROR: i64 = -32002;
/// Error code: the plugin sends requests faster than it may; retry later.
pub const THROTTLED: i64 = -32003;

/// A request id: a number or a string (JSON-RPC allows both; `null` is
/// only for errors about unparsable requests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// A number.
    Num(i64),
    /// A string.
    Str(String),
}

impl Id {
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => n.as_i64().map(Self::Num),
            Value::String(s) => Some(Self::Str(s.clone())),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Num(n) => json!(n),
            Self::Str(s) => json!(s),
        }
    }
}

/// One line from a plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A call the node must answer.
    Request {
        /// Its id.
        id: Id,
        /// The method.
        method: String,
        /// The parameters (an object; `{}` when absent).
        params: Map<String, Value>,
    },
    /// A call without an answer.
    Notification {
        /// The method.
        method: String,
        /// The parameters.
        params: Map<String, Value>,
    },
    /// The answer to one of the node's requests.
    Response {
        /// The id of the node's request.
        id: Id,
        /// The result, or the error's code and message.
        outcome: Result<Value, (i64, String)>,
    },
}

/// Why a line from a plugin was not taken; the node answers with
/// [`LineError::code`] when the line carried an id (or `null`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Over [`MAX_LINE`] bytes.
    #[error("line of {0} bytes, over the {MAX_LINE}-byte limit")]
    TooLong(usize),
    /// Not JSON.
    #[error("not JSON: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(String),
}

impl LineError {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            Self::TooLong(_) | Self::Invalid(_) => INVALID_REQUEST,
            Self::Parse(_) => PARSE_ERROR,
        }
    }
}

/// Reads one line (without its newline) from a plugin. On an error the
/// second value is the id to answer to, if the line had a usable one.
///
/// # Errors
/// The line is too long, not JSON, or not JSON-RPC 2.0.
pub fn parse_line(line: &str) -> Result<Incoming, (LineError, Option<Id>)> {
    if line.len() > MAX_LINE {
        return Err((LineError::TooLong(line.len()), None));
    }
    let v: Value =
        serde_json::from_str(line).map_err(|e| (LineError::Parse(e.to_string()), None))?;
    let Value::Object(mut obj) = v else {
        return Err((LineError::Invalid("not an object".into()), None));
    };
    let id_value = obj.remove("id");
    let id = id_value.as_ref().and_then(Id::from_json);
    let invalid = |why: &str, id: Option<Id>| Err((LineError::Invalid(why.to_owned()), id));
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"", id);
    }
    if id_value.is_some() && id.is_none() && id_value != Some(Value::Null) {
        return invalid("\"id\" must be a number or a string", None);
    }
    if let Some(method) = obj.remove("method") {
        let Value::String(method) = method else {
            return invalid("\"method\" must be a string", id);
        };
        let params = match obj.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return invalid("\"params\" must be an object", id),
        };
        return Ok(match id {
            Some(id) => Incoming::Request { id, method, params },
            None => Incoming::Notification { method, params },
        });
    }
    let Some(id) = id else {
        return invalid("a response needs the id of the request", None);
    };
    match (obj.remove("result"), obj.remove("error")) {
        (Some(result), None) => Ok(Incoming::Response {
            id,
            outcome: Ok(result),
        }),
        (None, Some(Value::Object(err))) => {
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Ok(Incoming::Response {
                id,
                outcome: Err((code, message)),
            })
        }
        _ => invalid(
            "a message needs \"method\", or exactly one of \"result\" and \"error\"",
            Some(id),
        ),
    }
}

/// The node's lines to a plugin (each without its newline).
#[derive(Debug)]
pub struct Outgoing;

impl Outgoing {
    /// A request.
    pub fn request(id: i64, method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    }

    /// A notification.
    pub fn notification(method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
    }

    /// A successful answer to the plugin's request `id`.
    pub fn result(id: &Id, result: Value) -> String {
        json!({"jsonrpc": "2.0", "id": id.to_json(), "result": result}).to_string()
    }

    /// An error answer (`id` `None`: the request could not be read).
    pub fn error(id: Option<&Id>, code: i64, message: &str) -> String {
        json!({
            "jsonrpc": "2.0",
            "id": id.map_or(Value::Null, Id::to_json),
            "error": {"code": code, "message": message},
        })
        .to_string()
    }
}

/// `value_b64`, and `value` too when the bytes are UTF-8.
pub fn bytes_fields(prefix: &str, bytes: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(format!("{prefix}_b64"), json!(B64.encode(bytes)));
    if let Ok(text) = std::str::from_utf8(bytes) {
        m.insert(prefix.to_owned(), json!(text));
    }
    m
}

/// The bytes of field `name` in `params`: `<name>` as a UTF-8 string, or
/// `<name>_b64` in base64.
///
/// # Errors
/// A message naming the field when neither is there or the base64 is bad.
pub fn take_bytes(params: &Map<String, Value>, name: &str) -> Result<Bytes, String> {
    let b64 = format!("{name}_b64");
    match (params.get(name), params.get(&b64)) {
        (Some(Value::String(s)), None) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        (None, Some(Value::String(s))) => B64
            .decode(s)
            .map(Bytes::from)
            .map_err(|e| format!("\"{b64}\" is not base64: {e}")),
        (Some(_), Some(_)) => Err(format!("give \"{name}\" or \"{b64}\", not both")),
        _ => Err(format!(
            "\"{name}\" (a string) or \"{b64}\" (base64) is missing"
        )),
    }
}

/// The params of an `event` notification.
pub fn event_params(event: &Event) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!(event.name()));
    match event {
        Event::Chat {
            nick,
            node,
            text,
            action,
            timestamp,
        } => {
            m.insert("nick".into(), json!(nick));
            m.insert("node".into(), json!(node));
            m.insert("text".into(), json!(text));
            m.insert("action".into(), json!(action));
            m.insert("timestamp".into(), json!(timestamp));
        }
        Event::State {
            key,
            author,
            value,
            deleted,
        } => {
            m.insert("key".into(), json!(key));
            m.insert("author".into(), json!(author.to_hex()));
            m.insert("deleted".into(), json!(deleted));
            m.extend(bytes_fields("value", value));
        }
        Event::PeerUp { node_id, addr } => {
            m.insert("node_id".into(), json!(node_id.to_hex()));
            m.insert("addr".into(), json!(addr));
        }
        Event::PeerDown { node_id, reason } => {
            m.insert("node_id".into(), json!(node_id.to_hex()));
            m.insert("reason".into(), json!(reason));
        }
        Event::MemberUp { node_id, name }
        | Event::MemberDown { node_id, name }
        | Event::MemberLeft { node_id, name } => {
            m.insert("node_id".into(), json!(node_id.to_hex()));
            m.insert("name".into(), json!(name));
        }
        Event::Message {
            msg_type,
            sender,
            payload,
            message_id,
        } => {
            m.insert("msg_type".into(), json!(msg_type));
            m.insert("sender".into(), json!(sender.to_hex()));
            m.insert("message_id".into(), json!(message_id));
            m.extend(bytes_fields("payload", payload));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::NodeId;

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        let r = parse_line(r#"{"jsonrpc":"2.0","id":7,"method":"state.get","params":{"key":"k"}}"#)
            .unwrap();
        assert!(
            matches!(r, Incoming::Request { id: Id::Num(7), ref method, .. } if method == "state.get")
        );
        let n =
            parse_line(r#"{"jsonrpc":"2.0","method":"log","params":{"message":"hi"}}"#).unwrap();
        assert!(matches!(n, Incoming::Notification { ref method, .. } if method == "log"));
        let ok = parse_line(r#"{"jsonrpc":"2.0","id":"a","result":{"text":"x"}}"#).unwrap();
        assert_eq!(
            ok,
            Incoming::Response {
                id: Id::Str("a".into()),
                outcome: Ok(json!({"text": "x"}))
            }
        );
        let err = parse_line(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#)
            .unwrap();
        assert_eq!(
            err,
            Incoming::Response {
                id: Id::Num(3),
                outcome: Err((-32601, "no".into()))
            }
        );
        // Params absent or null are an empty object.
        let r = parse_line(r#"{"jsonrpc":"2.0","id":1,"method":"members"}"#).unwrap();
        assert!(matches!(r, Incoming::Request { params, .. } if params.is_empty()));
    }

    #[test]
    fn bad_lines_say_why_and_keep_the_id_when_there_is_one() {
        let cases: [(&str, i64, Option<Id>); 9] = [
            ("not json", PARSE_ERROR, None),
            ("", PARSE_ERROR, None),
            ("[1,2]", INVALID_REQUEST, None),
            (
                r#"{"id":1,"method":"x"}"#,
                INVALID_REQUEST,
                Some(Id::Num(1)),
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                INVALID_REQUEST,
                Some(Id::Num(1)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":5}"#,
                INVALID_REQUEST,
                Some(Id::Num(2)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"x","params":[1]}"#,
                INVALID_REQUEST,
                Some(Id::Num(2)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"result":1,"error":{}}"#,
                INVALID_REQUEST,
                Some(Id::Num(2)),
            ),
        ];
        for (line, code, id) in cases {
            let (e, got) = parse_line(line).unwrap_err();
            assert_eq!(e.code(), code, "{line}: {e}");
            assert_eq!(got, id, "{line}");
        }
        let long = format!(
            r#"{{"jsonrpc":"2.0","method":"log","params":{{"m":"{}"}}}}"#,
            "x".repeat(MAX_LINE)
        );
        assert!(matches!(
            parse_line(&long),
            Err((LineError::TooLong(_), None))
        ));
        // No panic on arbitrary bytes that are valid UTF-8.
        for s in ["{", "{\"jsonrpc\":\"2.0\"}", "null", "\"\\u0000\"", "1e999"] {
            let _ = parse_line(s);
        }
    }

    #[test]
    fn outgoing_lines_are_one_line_of_json_rpc() {
        let lines = [
            Outgoing::request(1, "initialize", json!({"protocol_version": 1})),
            Outgoing::notification("event", json!({"event": "chat", "text": "a\nb"})),
            Outgoing::result(&Id::Str("x".into()), json!({})),
            Outgoing::error(None, PARSE_ERROR, "not JSON"),
        ];
        for l in &lines {
            assert!(!l.contains('\n'), "{l}");
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
        }
        let v: Value = serde_json::from_str(&lines[3]).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], PARSE_ERROR);
    }

    #[test]
    fn bytes_travel_as_text_or_base64() {
        let m = bytes_fields("value", b"hello");
        assert_eq!(m["value"], "hello");
        assert_eq!(m["value_b64"], "aGVsbG8=");
        let m = bytes_fields("payload", &[0xff, 0]);
        assert!(!m.contains_key("payload"));
        let mut p = Map::new();
        p.insert("value".into(), json!("hi"));
        assert_eq!(take_bytes(&p, "value").unwrap(), Bytes::from_static(b"hi"));
        let mut p = Map::new();
        p.insert("value_b64".into(), json!("/wA="));
        assert_eq!(&take_bytes(&p, "value").unwrap()[..], &[0xff, 0]);
        p.insert("value".into(), json!("x"));
        assert!(take_bytes(&p, "value").unwrap_err().contains("not both"));
        let mut p = Map::new();
        p.insert("value_b64".into(), json!("***"));
        assert!(take_bytes(&p, "value").unwrap_err().contains("not base64"));
        assert!(
            take_bytes(&Map::new(), "value")
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn every_event_has_its_fields() {
        let id = NodeId::from_public_key_bytes(&[7; 32]);
        let v = event_params(&Event::Message {
            msg_type: 1000,
            sender: id,
            payload: Bytes::from_static(b"up?"),
            message_id: "m1".into(),
        });
        assert_eq!(v["event"], "message");
        assert_eq!(v["msg_type"], 1000);
        assert_eq!(v["sender"], id.to_hex());
        assert_eq!(v["payload"], "up?");
        let v = event_params(&Event::State {
            key: "k".into(),
            author: id,
            value: Bytes::new(),
            deleted: true,
        });
        assert_eq!(
            (v["event"].as_str(), v["deleted"].as_bool()),
            (Some("state"), Some(true))
        );
        let v = event_params(&Event::MemberLeft {
            node_id: id,
            name: "n".into(),
        });
        assert_eq!(v["event"], "member_left");
        assert_eq!(v["name"], "n");
    }
}
