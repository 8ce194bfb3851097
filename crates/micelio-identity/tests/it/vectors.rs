//! Every identity in `testdata/reference-v1.json` is reproduced byte for byte.

use curve25519_dalek::MontgomeryPoint;
use micelio_identity::{Identity, NodeId, PublicKey};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/reference-v1.json"
    );
    let text = std::fs::read_to_string(path).expect("reference vectors are in testdata/");
    serde_json::from_str(&text).expect("reference vectors are JSON")
}

fn identities() -> Vec<Value> {
    let v = reference()["identities"]
        .as_array()
        .expect("identities")
        .clone();
    assert!(!v.is_empty());
    v
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("missing field {name}"))
}

fn seed(v: &Value) -> [u8; 32] {
    hex::decode(field(v, "seed_hex"))
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn public_key_and_node_id() {
    for v in identities() {
        let id = Identity::from_seed(seed(&v));
        assert_eq!(
            hex::encode(id.public_key().as_bytes()),
            field(&v, "ed25519_public_hex")
        );
        assert_eq!(id.node_id().to_string(), field(&v, "node_id"));
        let parsed: NodeId = field(&v, "node_id").parse().unwrap();
        assert_eq!(&parsed, id.node_id());
    }
}

#[test]
fn pkcs8_pem_is_byte_identical() {
    for v in identities() {
        let id = Identity::from_seed(seed(&v));
        assert_eq!(
            id.to_pkcs8_pem().as_str(),
            field(&v, "private_key_pkcs8_pem")
        );
        let loaded = Identity::from_pkcs8_pem(field(&v, "private_key_pkcs8_pem")).unwrap();
        assert_eq!(*loaded.seed(), seed(&v));
    }
}

#[test]
fn openssh_line_is_byte_identical() {
    for v in identities() {
        let id = Identity::from_seed(seed(&v));
        let expected = field(&v, "public_key_openssh");
        // The reference writes the line with a trailing newline; the vector
        // may or may not keep it.
        assert_eq!(id.openssh_public_line().trim_end(), expected.trim_end());
        assert_eq!(PublicKey::from_openssh(expected).unwrap(), id.public_key());
    }
}

#[test]
fn x25519_keys() {
    for v in identities() {
        let id = Identity::from_seed(seed(&v));
        assert_eq!(
            hex::encode(*id.x25519_private()),
            field(&v, "x25519_private_hex")
        );
        assert_eq!(
            hex::encode(id.x25519_public()),
            field(&v, "x25519_public_hex")
        );
        // The private key, clamped by X25519, really yields the public key.
        let derived = MontgomeryPoint::mul_base_clamped(*id.x25519_private());
        assert_eq!(derived.to_bytes(), id.x25519_public());
    }
}

#[test]
fn vector_copy_matches_shared_when_present() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/reference-v1.json"
    );
    if let Ok(original) = std::fs::read(shared) {
        let copy = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/reference-v1.json"
        ))
        .unwrap();
        assert!(
            original == copy,
            "testdata/reference-v1.json differs from ../shared/vectors"
        );
    }
}
