//! The command line of a `micelio` test node.

use std::path::Path;
use std::process::Command;

/// `bin ARGS`, with `HOME` set to `home`, colours off, and every
/// `MICELIO_…` variable of the caller's environment removed, so that a
/// developer's own settings never leak into a test.
pub fn command(bin: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("HOME", home).env("NO_COLOR", "1");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MICELIO_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The second whitespace-separated word of `line` (`"peers 127.0.0.1:4000"`
/// → `"127.0.0.1:4000"`), or an empty string.
pub fn second_word(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micelio_variables_are_not_inherited() {
        let cmd = command(Path::new("/bin/true"), Path::new("/tmp/h"), &["id"]);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(
            envs.iter()
                .any(|(k, v)| *k == "HOME" && *v == Some("/tmp/h".as_ref()))
        );
        for (k, v) in envs {
            if k.to_string_lossy().starts_with("MICELIO_") {
                assert!(v.is_none(), "{k:?} removed");
            }
        }
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["id"]);
    }

    #[test]
    fn second_word_of_a_line() {
        assert_eq!(second_word("peers 127.0.0.1:4000 x"), "127.0.0.1:4000");
        assert_eq!(second_word("alone"), "");
    }
}
