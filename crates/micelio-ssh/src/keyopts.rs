//! The options of an `authorized_keys` line, parsed and checked the way
//! OpenSSH's sshd reads them, failing closed.
//!
//! Implemented: `from="pattern-list"`, `restrict`, `no-pty`, `pty`, and the
//! restrictions micelio always applies anyway (`no-port-forwarding`,
//! `no-agent-forwarding`, `no-X11-forwarding`, `no-user-rc`). Any other
//! option (`command=`, `environment=`, `permitopen=`, `cert-authority`,
//! `principals=`, `expiry-time=`, …) makes the line refuse its key: a
//! restriction micelio cannot honour must not turn into a login it did not
//! mean.
//!
//! `from=` matches the client's IP address as text, never a host name: host
//! names are not resolved (as sshd with `UseDNS no`), so a host-name pattern
//! other than a pure wildcard matches nothing.

use std::net::IpAddr;

/// One pattern of a `from=` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `addr/masklen`.
    Cidr { net: IpAddr, len: u8 },
    /// A glob (`*`, `?`) over the address text, lower case.
    Glob(String),
}

/// A parsed `from=` list: patterns, each possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FromList {
    patterns: Vec<(bool, Pattern)>,
}

impl FromList {
    /// Parses a comma-separated pattern list.
    ///
    /// # Errors
    /// A description of the first bad pattern: an empty one, a lone `!`, or
    /// a CIDR whose address does not parse, whose mask is too long, or which
    /// has bits set beyond its mask (sshd refuses those too).
    pub(crate) fn parse(list: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in list.split(',') {
            let (negated, text) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if text.is_empty() {
                return Err(format!("empty pattern in {list:?}"));
            }
            let pattern = match text.split_once('/') {
                Some((addr, len)) => {
                    parse_cidr(addr, len).ok_or_else(|| format!("bad address/masklen {text:?}"))?
                }
                None => {
                    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(format!("bad pattern {text:?}"));
                    }
                    Pattern::Glob(text.to_ascii_lowercase())
                }
            };
            patterns.push((negated, pattern));
        }
        Ok(Self { patterns })
    }

    /// Whether a client at `ip` may use the key: no negated pattern matches
    /// and at least one positive pattern does.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let text = ip.to_string();
        let mut positive = false;
        for (negated, pattern) in &self.patterns {
            let hit = match pattern {
                Pattern::Cidr { net, len } => in_network(ip, *net, *len),
                Pattern::Glob(glob) => glob_match(glob.as_bytes(), text.as_bytes()),
            };
            if hit && *negated {
                return false;
            }
            positive |= hit;
        }
        positive
    }
}

fn parse_cidr(addr: &str, len: &str) -> Option<Pattern> {
    let net: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    if len > max {
        return None;
    }
    // Bits beyond the mask must be zero: `10.0.0.1/8` is a typo, not a net.
    if mask(net, len) != net {
        return None;
    }
    Some(Pattern::Cidr { net, len })
}

/// `ip` with every bit beyond the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    ip.is_ipv4() == net.is_ipv4() && mask(ip, len) == net
}

/// `*` matches any run of characters, `?` exactly one; the rest literally,
/// ignoring ASCII case.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear in practice, never
    // exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What the options of one line grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// The `from=` lists; each must allow the client.
    pub(crate) from: Vec<FromList>,
    /// Whether a PTY may be allocated.
    pub(crate) pty: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            from: Vec::new(),
            pty: true,
        }
    }
}

/// Why a line's options refuse its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OptionError {
    /// An option micelio does not implement.
    Unsupported(String),
    /// An option that micelio implements, with a bad value.
    Bad {
        /// The option's name.
        option: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(name) => write!(f, "option {name:?} is not supported by micelio"),
            Self::Bad { option, reason } => write!(f, "option {option:?}: {reason}"),
        }
    }
}

/// Splits the options at the start of `line` from the key that follows:
/// `(options text, rest)`. Options end at the first whitespace outside
/// double quotes. `None` if a quote is left open.
pub(crate) fn split_options(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Some((&line[..i], line[i..].trim_start())),
            _ => {}
        }
    }
    None
}

/// Parses and checks an options text (`from="10.0.0.0/8",no-pty`).
///
/// # Errors
/// The first option that is unknown, unsupported, or has a bad value.
pub(crate) fn parse_options(text: &str) -> Result<Options, OptionError> {
    let mut options = Options::default();
    for (name, value) in split_list(text)? {
        let lower = name.to_ascii_lowercase();
        match (lower.as_str(), value) {
            ("restrict", None) | ("no-pty", None) => options.pty = false,
            ("pty", None) => options.pty = true,
            // Never granted by micelio whatever the file says.
            (
                "no-port-forwarding" | "no-agent-forwarding" | "no-x11-forwarding" | "no-user-rc",
                None,
            ) => {}
            ("from", Some(list)) => {
                let list = FromList::parse(&list).map_err(|reason| OptionError::Bad {
                    option: name.clone(),
                    reason,
                })?;
                options.from.push(list);
            }
            ("from", None) => {
                return Err(OptionError::Bad {
                    option: name,
                    reason: "needs a quoted pattern list".to_owned(),
                });
            }
            _ => return Err(OptionError::Unsupported(name)),
        }
    }
    Ok(options)
}

/// Splits `a,b="x,y",c` into names and unquoted values.
fn split_list(text: &str) -> Result<Vec<(String, Option<String>)>, OptionError> {
    let bad = |reason: &str| OptionError::Bad {
        option: text.to_owned(),
        reason: reason.to_owned(),
    };
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() {
            return Err(bad("empty option"));
        }
        rest = &rest[end..];
        let value = if let Some(after) = rest.strip_prefix('=') {
            let body = after
                .strip_prefix('"')
                .ok_or_else(|| bad("a value must be in double quotes"))?;
            let mut value = String::new();
            let mut chars = body.char_indices();
            let mut close = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if body[i + 1..].starts_with('"') => {
                        value.push('"');
                        chars.next();
                    }
                    '"' => {
                        close = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let close = close.ok_or_else(|| bad("unterminated quote"))?;
            rest = &body[close + 1..];
            Some(value)
        } else {
            None
        };
        out.push((name.to_owned(), value));
        match rest.strip_prefix(',') {
            Some(more) => rest = more,
            None if rest.is_empty() => return Ok(out),
            None => return Err(bad("junk after a quoted value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(list: &str) -> FromList {
        FromList::parse(list).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_exact_and_wildcards() {
        assert!(from("127.0.0.1").allows(ip("127.0.0.1")));
        assert!(!from("127.0.0.1").allows(ip("127.0.0.2")));
        assert!(!from("127.0.0.1").allows(ip("127.0.0.10")), "whole text");
        assert!(from("10.1.*").allows(ip("10.1.200.3")));
        assert!(!from("10.1.*").allows(ip("10.10.0.1")));
        assert!(from("192.168.1.?").allows(ip("192.168.1.7")));
        assert!(!from("192.168.1.?").allows(ip("192.168.1.70")));
        assert!(from("*").allows(ip("8.8.8.8")));
        assert!(from("*.*.*.1*").allows(ip("10.0.0.123")));
        assert!(
            from("10.0.0.5,127.0.0.1").allows(ip("127.0.0.1")),
            "any positive"
        );
    }

    #[test]
    fn ipv6_text_and_mapped_addresses() {
        assert!(from("::1").allows(ip("::1")));
        assert!(from("2001:db8::*").allows(ip("2001:db8::42")));
        assert!(from("2001:DB8::*").allows(ip("2001:db8::42")), "case");
        assert!(!from("2001:db8::*").allows(ip("2001:db9::42")));
        // An IPv4 client seen through a dual-stack listener.
        assert!(from("127.0.0.1").allows(ip("::ffff:127.0.0.1")));
        assert!(from("127.0.0.0/8").allows(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn cidr() {
        assert!(from("10.0.0.0/8").allows(ip("10.200.3.4")));
        assert!(!from("10.0.0.0/8").allows(ip("11.0.0.1")));
        assert!(from("0.0.0.0/0").allows(ip("1.2.3.4")));
        assert!(!from("0.0.0.0/0").allows(ip("::1")), "families do not mix");
        assert!(from("192.168.1.128/25").allows(ip("192.168.1.200")));
        assert!(!from("192.168.1.128/25").allows(ip("192.168.1.100")));
        assert!(from("127.0.0.1/32").allows(ip("127.0.0.1")));
        assert!(from("2001:db8::/32").allows(ip("2001:db8:ffff::1")));
        assert!(!from("2001:db8::/32").allows(ip("2001:db9::1")));
        assert!(from("::1/128").allows(ip("::1")));
    }

    #[test]
    fn negation_refuses_even_when_a_positive_matches() {
        assert!(!from("!127.0.0.1,*").allows(ip("127.0.0.1")));
        assert!(from("!127.0.0.1,*").allows(ip("127.0.0.2")));
        assert!(!from("*,!10.0.0.0/8").allows(ip("10.1.1.1")));
        assert!(from("*,!10.0.0.0/8").allows(ip("192.168.0.1")));
        // Only negations: nothing positive matches, so nobody.
        assert!(!from("!10.0.0.1").allows(ip("127.0.0.1")));
    }

    #[test]
    fn host_names_are_not_resolved() {
        assert!(!from("localhost").allows(ip("127.0.0.1")));
        assert!(!from("*.example.org").allows(ip("127.0.0.1")));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "",
            ",",
            "10.0.0.1,",
            "!",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "nothost/8",
            "::1/129",
            "2001:db8::1/32",
            "a b",
        ] {
            assert!(FromList::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(200);
        assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn options_are_parsed_and_unknown_ones_refused() {
        let o = parse_options(r#"from="10.0.0.0/8,!10.0.0.1",no-pty"#).unwrap();
        assert_eq!(o.from.len(), 1);
        assert!(!o.pty);
        assert!(o.from[0].allows(ip("10.0.0.2")));
        assert!(!o.from[0].allows(ip("10.0.0.1")));
        assert!(!parse_options("restrict").unwrap().pty);
        assert!(parse_options("restrict,pty").unwrap().pty, "left to right");
        assert!(
            parse_options("NO-PORT-FORWARDING,no-X11-forwarding,no-agent-forwarding,no-user-rc")
                .unwrap()
                .pty
        );
        for (text, name) in [
            (r#"command="/bin/true""#, "command"),
            (r#"environment="A=b""#, "environment"),
            (r#"permitopen="host:22""#, "permitopen"),
            ("cert-authority", "cert-authority"),
            (r#"principals="a""#, "principals"),
            (r#"expiry-time="20300101""#, "expiry-time"),
            (r#"no-pty,command="echo \"hi\"""#, "command"),
            ("port-forwarding", "port-forwarding"),
        ] {
            assert_eq!(
                parse_options(text),
                Err(OptionError::Unsupported(name.to_owned())),
                "{text}"
            );
        }
        for bad in [
            "from",
            r#"from="10.0.0.1/8""#,
            r#"from=10.0.0.1"#,
            r#"from="10.0.0.1"x"#,
            r#"from="10.0.0.1"#,
            ",no-pty",
        ] {
            assert!(
                matches!(parse_options(bad), Err(OptionError::Bad { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn options_end_at_whitespace_outside_quotes() {
        let line = r#"from="a b",no-pty ssh-ed25519 AAAA c"#;
        assert_eq!(
            split_options(line),
            Some((r#"from="a b",no-pty"#, "ssh-ed25519 AAAA c"))
        );
        assert_eq!(split_options(r#"from="open ssh-ed25519 AAAA"#), None);
        let escaped = r#"command="say \"x y\"" ssh-ed25519 AAAA"#;
        assert_eq!(
            split_options(escaped),
            Some((r#"command="say \"x y\"""#, "ssh-ed25519 AAAA"))
        );
    }
}
