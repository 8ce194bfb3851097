//! `docs/plugins.md` says what the node does: its worked transcript is
//! valid protocol both ways (and the node's answer to the bad line is the
//! one shown), and its JSON Schema is JSON.

use std::path::Path;

use micelio_plugins::external::protocol::{Incoming, Outgoing, parse_line};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/plugins.md");
    std::fs::read_to_string(path).unwrap()
}

/// The body of the first fenced block of `lang` after `heading`.
fn block(doc: &str, heading: &str, lang: &str) -> String {
    let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &doc[at..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).unwrap() + open.len();
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_owned()
}

#[test]
fn the_worked_transcript_is_valid_protocol_both_ways() {
    let text = block(&doc(), "### A worked transcript", "text");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 10);
    for (i, line) in lines.iter().enumerate() {
        if let Some(from_node) = line.strip_prefix("→ ") {
            let v: serde_json::Value = serde_json::from_str(from_node).unwrap();
            assert_eq!(v["jsonrpc"], "2.0", "{line}");
        } else if let Some(from_plugin) = line.strip_prefix("← ") {
            match parse_line(from_plugin) {
                Ok(Incoming::Request { .. } | Incoming::Response { .. }) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err((e, id)) => {
                    // The next line is the node's answer (as JSON: key
                    // order aside).
                    let shown = lines[i + 1].strip_prefix("→ ").unwrap();
                    let sent = Outgoing::error(id.as_ref(), e.code(), &e.to_string());
                    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
                    assert_eq!(json(shown), json(&sent));
                }
            }
        } else {
            panic!("a transcript line starts with → or ←: {line}");
        }
    }
}

#[test]
fn the_schema_is_json_and_names_every_method() {
    let schema = block(&doc(), "## JSON Schemas", "json");
    let v: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let defs = v["$defs"].as_object().unwrap();
    for m in [
        "initialize",
        "initialized",
        "command",
        "event",
        "apply",
        "remove",
        "shutdown",
        "broadcast",
        "state_get",
        "state_scan",
        "state_set",
        "state_delete",
        "members",
        "log",
    ] {
        assert!(defs.contains_key(m), "no schema for {m}");
    }
}
