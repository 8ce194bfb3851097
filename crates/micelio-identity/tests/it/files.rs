//! The key files on disk: creation, loading, and every way a key file can be bad.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use micelio_identity::{Identity, IdentityError, KeyError, KeyFiles, Provenance};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn write_key(files: &KeyFiles, content: &[u8], mode: u32) {
    fs::create_dir_all(files.dir()).unwrap();
    fs::write(files.key_path(), content).unwrap();
    fs::set_permissions(files.key_path(), fs::Permissions::from_mode(mode)).unwrap();
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

#[test]
fn first_run_creates_files_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let (id, how) = files.load_or_create().unwrap();
    assert_eq!(how, Provenance::Created);
    assert_eq!(mode(files.dir()), 0o700);
    assert_eq!(mode(&files.key_path()), 0o600);
    let line = fs::read_to_string(files.pub_path()).unwrap();
    assert_eq!(line, id.openssh_public_line());

    let (again, how) = files.load_or_create().unwrap();
    assert_eq!(how, Provenance::Loaded);
    assert_eq!(again.node_id(), id.node_id());
}

#[test]
fn loads_a_data_dir_made_by_the_reference() {
    // The reference writes node.key (0600) and node.pub exactly as in the
    // known-answer vectors; build such a dir by hand and load it.
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/reference-v1.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for ident in v["identities"].as_array().unwrap() {
        let tmp = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(tmp.path());
        write_key(
            &files,
            ident["private_key_pkcs8_pem"].as_str().unwrap().as_bytes(),
            0o600,
        );
        let mut line = ident["public_key_openssh"].as_str().unwrap().to_owned();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        fs::write(files.pub_path(), &line).unwrap();
        let (id, how) = files.load_or_create().unwrap();
        assert_eq!(how, Provenance::Loaded);
        assert_eq!(id.node_id().to_string(), ident["node_id"].as_str().unwrap());
        // Nothing was rewritten.
        assert_eq!(fs::read_to_string(files.pub_path()).unwrap(), line);
    }
}

#[test]
fn missing_key_is_reported_by_load() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::Missing { ref path } if *path == files.key_path()));
    assert!(err.to_string().contains("node.key"));
}

#[test]
fn malformed_key_is_an_error_and_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    write_key(&files, b"this is not a key\n", 0o600);
    let err = files.load_or_create().unwrap_err();
    assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("node.key"));
    assert_eq!(fs::read(files.key_path()).unwrap(), b"this is not a key\n");
}

#[test]
fn binary_key_file_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    write_key(&files, &[0xff, 0xfe, 0x00, 0x80], 0o600);
    assert!(matches!(files.load(), Err(IdentityError::Malformed { .. })));
}

#[test]
fn wrong_pem_label_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let good = Identity::from_seed([1; 32]).to_pkcs8_pem();
    let relabelled = good.replace("PRIVATE KEY", "PUBLIC KEY");
    write_key(&files, relabelled.as_bytes(), 0o600);
    let err = files.load().unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::Malformed {
                source: KeyError::WrongLabel(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_der_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let der = hex::decode("302e020100300506032b6570042204200101").unwrap();
    write_key(&files, pem("PRIVATE KEY", &der).as_bytes(), 0o600);
    let err = files.load().unwrap_err();
    // The PEM layer already notices the DER is cut short.
    assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
}

#[test]
fn non_ed25519_key_is_wrong_algorithm() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    // A PKCS#8 X25519 key (OID 1.3.101.110): a valid key of another algorithm.
    let mut der = hex::decode("302e020100300506032b656e04220420").unwrap();
    der.extend_from_slice(&[0x11; 32]);
    write_key(&files, pem("PRIVATE KEY", &der).as_bytes(), 0o600);
    let err = files.load().unwrap_err();
    match err {
        IdentityError::WrongAlgorithm {
            ref found,
            ref path,
        } => {
            assert_eq!(found, "1.3.101.110");
            assert_eq!(*path, files.key_path());
        }
        other => panic!("expected WrongAlgorithm, got {other}"),
    }
}

#[test]
fn group_or_world_readable_key_is_refused() {
    for bad in [0o644, 0o640, 0o604, 0o660] {
        let tmp = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(tmp.path());
        let pem = Identity::from_seed([2; 32]).to_pkcs8_pem();
        write_key(&files, pem.as_bytes(), bad);
        let err = files.load_or_create().unwrap_err();
        assert!(
            matches!(err, IdentityError::TooOpen { mode, .. } if mode == bad),
            "{bad:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        // Owner-only modes are fine.
        fs::set_permissions(files.key_path(), fs::Permissions::from_mode(0o400)).unwrap();
        files.load().unwrap();
    }
}

#[test]
fn unreadable_key_is_a_read_error() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    // A directory where the key should be: it exists, has owner-only
    // permissions, and cannot be read as a file (even by root).
    fs::create_dir_all(files.key_path()).unwrap();
    fs::set_permissions(files.key_path(), fs::Permissions::from_mode(0o700)).unwrap();
    let err = files.load_or_create().unwrap_err();
    assert!(matches!(err, IdentityError::Read { .. }), "{err}");
}

#[test]
fn missing_pub_is_rewritten_and_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let (id, _) = files.load_or_create().unwrap();
    fs::remove_file(files.pub_path()).unwrap();
    files.load().unwrap();
    assert_eq!(
        fs::read_to_string(files.pub_path()).unwrap(),
        id.openssh_public_line()
    );

    let other = Identity::from_seed([8; 32]);
    fs::write(files.pub_path(), other.openssh_public_line()).unwrap();
    let err = files.load().unwrap_err();
    assert!(
        matches!(err, IdentityError::PublicKeyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn create_never_overwrites_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let files = KeyFiles::new(tmp.path());
    let (id, _) = files.load_or_create().unwrap();
    let before = fs::read(files.key_path()).unwrap();
    let err = files.create(&Identity::from_seed([4; 32])).unwrap_err();
    assert!(matches!(err, IdentityError::Write { .. }));
    assert_eq!(fs::read(files.key_path()).unwrap(), before);
    assert_eq!(files.load().unwrap().node_id(), id.node_id());
}
