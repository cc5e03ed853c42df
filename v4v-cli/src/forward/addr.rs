// SPDX-License-Identifier: MIT OR Apache-2.0
//! The addresses `forward` takes: where to listen and where to connect.
//!
//! Pure parsing and printing, nothing here opens a socket. Listeners: `tcp-listen:[HOST:]PORT`,
//! `unix-listen:PATH`, `v4v-listen:PORT`. Targets: `tcp:HOST:PORT`, `unix:PATH`,
//! `v4v:DOM:PORT`. A TCP host is a name, an IPv4 address or an IPv6 address in brackets
//! (`[::1]`); without one a TCP listener binds 127.0.0.1, as `ssh -L` does.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use v4v::client::SockAddr;

/// Where `forward` accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp-listen:[HOST:]PORT` (port 0: any free port).
    Tcp { host: String, port: u16 },
    /// `unix-listen:PATH`.
    Unix(PathBuf),
    /// `v4v-listen:PORT` (port 0: an ephemeral one).
    V4v(u32),
}

/// Where `forward` connects for each accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    /// `tcp:HOST:PORT`.
    Tcp { host: String, port: u16 },
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `v4v:DOM:PORT`.
    V4v(SockAddr),
    /// `v4v:NAME:PORT` (or `v4v:name:NAME:PORT`): resolved through the daemon at start.
    V4vNamed { name: String, port: u32 },
}

/// The host a TCP listener binds when the address names none.
pub const DEFAULT_LISTEN_HOST: &str = "127.0.0.1";

/// The longest Unix socket path Linux takes (`sun_path` less its terminating NUL).
const MAX_UNIX_PATH: usize = 107;

/// Why an address did not parse. Each says what was expected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AddrError {
    #[error("{0:?} has no address kind: write KIND:ADDRESS, KIND one of {1}")]
    NoKind(String, &'static str),
    #[error("unknown address kind {0:?}: expected one of {1}")]
    UnknownKind(String, &'static str),
    #[error("{0:?} is a listening address; a target is tcp:HOST:PORT, unix:PATH or v4v:DOM:PORT")]
    ListenerAsTarget(String),
    #[error(
        "{0:?} is a target address; a listener is tcp-listen:[HOST:]PORT, unix-listen:PATH or v4v-listen:PORT"
    )]
    TargetAsListener(String),
    #[error("{0:?}: expected {1}")]
    Shape(String, &'static str),
    #[error("{0:?}: bad port {1:?} (a number from {2} to {3})")]
    BadPort(String, String, u64, u64),
    #[error("{0:?}: empty host")]
    EmptyHost(String),
    #[error("{0:?}: bad host {1:?} (a name, an IPv4 address, or an IPv6 address in brackets)")]
    BadHost(String, String),
    #[error("{0:?}: bad domain:port: {1}")]
    BadV4v(String, String),
    #[error("{0:?}: empty path")]
    EmptyPath(String),
    #[error("{0:?}: the path is longer than the {MAX_UNIX_PATH} bytes a Unix socket address holds")]
    PathTooLong(String),
}

const LISTEN_KINDS: &str = "tcp-listen, unix-listen, v4v-listen";
const TARGET_KINDS: &str = "tcp, unix, v4v";

/// Shortens user input quoted in errors.
fn quote(s: &str) -> String {
    s.chars().take(80).collect()
}

fn parse_port(whole: &str, p: &str, min: u64, max: u64) -> Result<u64, AddrError> {
    let bad = || AddrError::BadPort(quote(whole), quote(p), min, max);
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = p.parse().map_err(|_| bad())?;
    if n < min || n > max {
        return Err(bad());
    }
    Ok(n)
}

/// Checks a host: `[v6]` (kept without brackets), or a name / IPv4 address of letters, digits,
/// dots, hyphens and underscores.
fn parse_host(whole: &str, h: &str) -> Result<String, AddrError> {
    if h.is_empty() {
        return Err(AddrError::EmptyHost(quote(whole)));
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| AddrError::BadHost(quote(whole), quote(h)));
    }
    let ok = h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(AddrError::BadHost(quote(whole), quote(h)));
    }
    Ok(h.to_string())
}

/// Splits `HOST:PORT` at the last colon (`[::1]:80` keeps its brackets in HOST).
fn split_host_port(rest: &str) -> Option<(&str, &str)> {
    if rest.starts_with('[') {
        let close = rest.find(']')?;
        let (h, p) = rest.split_at(close + 1);
        return Some((h, p.strip_prefix(':')?));
    }
    rest.rsplit_once(':')
}

fn parse_path(whole: &str, p: &str) -> Result<PathBuf, AddrError> {
    if p.is_empty() {
        return Err(AddrError::EmptyPath(quote(whole)));
    }
    if p.len() > MAX_UNIX_PATH {
        return Err(AddrError::PathTooLong(quote(whole)));
    }
    Ok(PathBuf::from(p))
}

/// Host for printing: IPv6 addresses get their brackets back.
fn show_host(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

impl FromStr for ListenAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| AddrError::NoKind(quote(s), LISTEN_KINDS))?;
        match kind {
            "tcp-listen" => {
                let (host, port) = match split_host_port(rest) {
                    Some((h, p)) => (parse_host(s, h)?, p),
                    None if !rest.starts_with('[') => (DEFAULT_LISTEN_HOST.to_string(), rest),
                    None => {
                        return Err(AddrError::Shape(quote(s), "tcp-listen:[HOST:]PORT"));
                    }
                };
                let port = parse_port(s, port, 0, u64::from(u16::MAX))? as u16;
                Ok(ListenAddr::Tcp { host, port })
            }
            "unix-listen" => Ok(ListenAddr::Unix(parse_path(s, rest)?)),
            "v4v-listen" => Ok(ListenAddr::V4v(
                parse_port(s, rest, 0, u64::from(u32::MAX))? as u32,
            )),
            "tcp" | "unix" | "v4v" => Err(AddrError::TargetAsListener(quote(s))),
            _ => Err(AddrError::UnknownKind(quote(kind), LISTEN_KINDS)),
        }
    }
}

impl FromStr for TargetAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| AddrError::NoKind(quote(s), TARGET_KINDS))?;
        match kind {
            "tcp" => {
                let (h, p) =
                    split_host_port(rest).ok_or(AddrError::Shape(quote(s), "tcp:HOST:PORT"))?;
                let host = parse_host(s, h)?;
                let port = parse_port(s, p, 1, u64::from(u16::MAX))? as u16;
                Ok(TargetAddr::Tcp { host, port })
            }
            "unix" => Ok(TargetAddr::Unix(parse_path(s, rest)?)),
            "v4v" => match v4v::client::proto::parse_named(rest) {
                Ok((v4v::names::DomainRef::Id(d), port)) => {
                    Ok(TargetAddr::V4v(SockAddr::new(d, port)))
                }
                Ok((v4v::names::DomainRef::Name(name), port)) => {
                    Ok(TargetAddr::V4vNamed { name, port })
                }
                Err(_) => Err(AddrError::BadV4v(
                    quote(s),
                    "expected v4v:DOM:PORT, DOM a domain id below 32752 or a domain name, PORT a 32-bit number"
                        .into(),
                )),
            },
            "tcp-listen" | "unix-listen" | "v4v-listen" => {
                Err(AddrError::ListenerAsTarget(quote(s)))
            }
            _ => Err(AddrError::UnknownKind(quote(kind), TARGET_KINDS)),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp { host, port } => write!(f, "tcp-listen:{}:{port}", show_host(host)),
            ListenAddr::Unix(p) => write!(f, "unix-listen:{}", p.display()),
            ListenAddr::V4v(port) => write!(f, "v4v-listen:{port}"),
        }
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Tcp { host, port } => write!(f, "tcp:{}:{port}", show_host(host)),
            TargetAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            TargetAddr::V4v(a) => write!(f, "v4v:{a}"),
            TargetAddr::V4vNamed { name, port } => write!(f, "v4v:{name}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn l(s: &str) -> Result<ListenAddr, AddrError> {
        s.parse()
    }
    fn t(s: &str) -> Result<TargetAddr, AddrError> {
        s.parse()
    }

    #[test]
    fn every_kind_parses() {
        assert_eq!(
            l("tcp-listen:8080"),
            Ok(ListenAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        assert_eq!(
            l("tcp-listen:0.0.0.0:80"),
            Ok(ListenAddr::Tcp {
                host: "0.0.0.0".into(),
                port: 80
            })
        );
        assert_eq!(
            l("tcp-listen:[::1]:0"),
            Ok(ListenAddr::Tcp {
                host: "::1".into(),
                port: 0
            })
        );
        assert_eq!(
            l("unix-listen:/run/x.sock"),
            Ok(ListenAddr::Unix("/run/x.sock".into()))
        );
        assert_eq!(l("v4v-listen:4294967295"), Ok(ListenAddr::V4v(u32::MAX)));
        assert_eq!(
            t("tcp:localhost:22"),
            Ok(TargetAddr::Tcp {
                host: "localhost".into(),
                port: 22
            })
        );
        assert_eq!(
            t("tcp:[fe80::1]:443"),
            Ok(TargetAddr::Tcp {
                host: "fe80::1".into(),
                port: 443
            })
        );
        assert_eq!(t("unix:rel/path"), Ok(TargetAddr::Unix("rel/path".into())));
        assert_eq!(t("v4v:0:80"), Ok(TargetAddr::V4v(SockAddr::new(0, 80))));
        let web = TargetAddr::V4vNamed {
            name: "web".into(),
            port: 80,
        };
        assert_eq!(t("v4v:web:80"), Ok(web.clone()));
        assert_eq!(t("v4v:name:web:80"), Ok(web));
        assert!(t("v4v:we b:80").is_err());
        assert!(t("v4v:web:").is_err());
        // A Unix path may hold colons.
        assert_eq!(t("unix:/tmp/a:b"), Ok(TargetAddr::Unix("/tmp/a:b".into())));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let msg = |r: Result<(), AddrError>| r.unwrap_err().to_string();
        let lm = |s: &str| msg(l(s).map(|_| ()));
        let tm = |s: &str| msg(t(s).map(|_| ()));
        assert!(lm("8080").contains("no address kind"), "{}", lm("8080"));
        assert!(lm("udp-listen:53").contains("unknown address kind \"udp-listen\""));
        assert!(lm("tcp:1.2.3.4:80").contains("is a target address"));
        assert!(tm("v4v-listen:80").contains("is a listening address"));
        assert!(lm("tcp-listen:65536").contains("bad port \"65536\""));
        assert!(lm("tcp-listen:").contains("bad port \"\""));
        assert!(tm("tcp:host:0").contains("from 1 to 65535"));
        assert!(tm("tcp:host").contains("expected tcp:HOST:PORT"));
        assert!(tm("tcp::80").contains("empty host"));
        assert!(tm("tcp:a b:80").contains("bad host \"a b\""));
        assert!(tm("tcp:[::zz]:80").contains("bad host"));
        assert!(tm("tcp:[::1]80").contains("expected tcp:HOST:PORT"));
        assert!(tm("v4v:0").contains("expected v4v:DOM:PORT"));
        assert!(tm("v4v:40000:1").contains("below 32752"));
        assert!(lm("v4v-listen:-1").contains("bad port"));
        assert!(tm("unix:").contains("empty path"));
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(tm(&long).contains("longer than the 107 bytes"));
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9.-]{0,20}",
            any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
            any::<[u16; 8]>().prop_map(|w| std::net::Ipv6Addr::from(w).to_string()),
        ]
    }

    fn listen() -> impl Strategy<Value = ListenAddr> {
        prop_oneof![
            (host(), any::<u16>()).prop_map(|(host, port)| ListenAddr::Tcp { host, port }),
            "/[a-z0-9/._:-]{1,60}".prop_map(|p| ListenAddr::Unix(p.into())),
            any::<u32>().prop_map(ListenAddr::V4v),
        ]
    }

    fn target() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            (host(), 1..=u16::MAX).prop_map(|(host, port)| TargetAddr::Tcp { host, port }),
            "[a-z0-9/._:-]{1,60}".prop_map(|p| TargetAddr::Unix(p.into())),
            (0..v4v::abi::DOMID_FIRST_RESERVED, any::<u32>())
                .prop_map(|(d, p)| TargetAddr::V4v(SockAddr::new(d, p))),
        ]
    }

    proptest! {
        #[test]
        fn printed_addresses_parse_back(a in listen(), b in target()) {
            prop_assert_eq!(a.to_string().parse::<ListenAddr>(), Ok(a));
            prop_assert_eq!(b.to_string().parse::<TargetAddr>(), Ok(b));
        }

        #[test]
        fn any_input_parses_or_gets_a_short_error(s in "\\PC{0,200}") {
            for e in [l(&s).err(), t(&s).err()].into_iter().flatten() {
                // The message quotes at most a bounded piece of the input.
                prop_assert!(e.to_string().len() < 400, "{}", e);
            }
        }

        #[test]
        fn a_listener_is_never_a_target(a in listen()) {
            let is_listener_err = matches!(a.to_string().parse::<TargetAddr>(), Err(AddrError::ListenerAsTarget(_)));
            prop_assert!(is_listener_err);
        }
    }
}
