// SPDX-License-Identifier: MIT OR Apache-2.0
//! v4vd's settings: one struct, [`Settings`], that is both the command line's options (clap) and
//! the config file's keys (TOML through serde), so a new key is one field.
//!
//! This module owns reading the config file (TOML, and the old `key = value` format through
//! [`migrate_legacy`]), merging the command line over it, and checking values that need more
//! than their type. It does not open the hypervisor, the socket or the group database.
//!
//! # The old format
//!
//! Before TOML, the file was `key = value` lines with bare values (`hypervisor = xen`) and
//! `#` comments anywhere on a line. The rule, documented in v4vd.conf(5): a file that is not
//! valid TOML for v4vd but whose every line is blank, a comment or `key = value` is rewritten
//! line by line into TOML (a value of digits stays a number, except `socket_mode`, which is octal
//! and becomes a string; `true` and `false` stay booleans; any other value becomes a quoted
//! string; `-` in a key becomes `_`) and read as that, with a warning; `v4vd --migrate-config
//! FILE` prints the rewrite. Line numbers are kept, so errors
//! still point at the user's line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A Unix permission mode for the socket: octal digits, at most `0777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u32::from_str_radix(s, 8)
            .ok()
            .filter(|m| *m <= 0o777 && !s.starts_with('+'))
            .map(Mode)
            .ok_or_else(|| format!("{s:?} is not an octal mode (0000 to 0777)"))
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an octal mode as a string, e.g. \"0660\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mode, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "write the mode as a string of octal digits, e.g. socket_mode = \"0{v}\" \
                     (TOML reads {v} as a decimal number)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every setting of v4vd: the config file's keys and the command-line options of the same name
/// (`ring_size` in the file is `--ring-size`). `None`: not given (a default applies).
///
/// To add a setting, add a field: clap, serde, the merge and `--migrate-config` pick it up.
/// Document it in docs/man/v4vd.conf.5 and systemd/v4vd.conf.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The hypervisor backend: xen, or sim:PATH for a v4v-sim socket
    /// [default: xen]
    #[arg(long, value_name = "xen|sim:PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// The domain this is; v4vd refuses to start as any other (with sim:, the domain to claim)
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domid: Option<u16>,
    /// The clients' Unix socket (ignored under socket activation)
    /// [default: $V4V_SOCKET, else /run/v4v/v4vd.sock]
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The socket's permissions, octal (ignored under socket activation) [default: 0666]
    #[arg(long, value_name = "OCTAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<Mode>,
    /// Data area of each ring v4vd registers, in bytes (a multiple of 16, 4096 to 16 MiB)
    /// [default: 262144]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u32>,
    /// Data area of each ring that carries streams, in bytes (as ring_size); a smaller one is
    /// used when the domain's ring pages would not leave room for every other ring
    /// [default: 4 × ring_size]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_ring_size: Option<u32>,
    /// Receive window of each stream, in bytes (at least 4096) [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// dom0: the ACL rules file, loaded at start and on SIGHUP; named, it must exist
    /// [default: /etc/v4v/acl.rules when it exists]
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
    /// dom0: besides root, members of this group may edit the ACL table
    #[arg(long, value_name = "GROUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_group: Option<String>,
    /// Besides root, members of this group may use the privileged ports 1-1023
    #[arg(long, value_name = "GROUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged_group: Option<String>,
    /// Connections one user other than root may hold [default: 4096]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients_per_user: Option<usize>,
    /// Rings one user other than root may hold [default: a quarter of the domain's ring limit]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rings_per_user: Option<u32>,
    /// Bytes v4vd buffers for one user other than root [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffer_per_user: Option<u32>,
    /// Seconds a client may take to send its request line (at least 1) [default: 10]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<u32>,
    /// The name this domain goes by: claimed on the simulator, checked against the toolstack's
    /// name on Xen
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// dom0: the domain names guests may resolve, published in xenstore under /v4v/names
    /// (separated by spaces or commas; a list in the file) [default: none]
    #[arg(long, value_name = "NAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_names: Option<NameList>,
}

/// A list of domain names: a TOML list, or (on the command line, and as the old format wrote
/// it) one string of names separated by spaces or commas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NameList(pub Vec<String>);

impl std::str::FromStr for NameList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(NameList(
            s.split([' ', ',', '\t'])
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum List {
            Names(Vec<String>),
            Text(String),
        }
        match List::deserialize(d)? {
            List::Names(v) => Ok(NameList(v)),
            List::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A config file that could not be used; the message names the file and the line.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with the line (toml's report, or ours).
    pub message: String,
}

/// How a config file was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML.
    Toml,
    /// The old `key = value` format, through [`migrate_legacy`].
    Legacy,
}

impl Settings {
    /// Reads `text` (the contents of `path`) as a config file.
    pub fn from_file_text(path: &Path, text: &str) -> Result<(Settings, Format), ConfigFileError> {
        let err = |message: String| ConfigFileError {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        };
        let toml_err = match toml::from_str::<Settings>(text) {
            Ok(s) => return Ok((s, Format::Toml)),
            Err(e) => e,
        };
        // Not TOML: the old format, if every line has its shape.
        let Some(migrated) = migrate_legacy(text) else {
            return Err(err(toml_err.to_string()));
        };
        match toml::from_str::<Settings>(&migrated) {
            Ok(s) => Ok((s, Format::Legacy)),
            // Valid TOML with a wrong key or value: TOML's report is the one to give.
            Err(_) if toml::from_str::<toml::Table>(text).is_ok() => Err(err(toml_err.to_string())),
            Err(e) => Err(err(format!(
                "{e}(read as the old `key = value` format, as v4vd.conf(5) says; the line numbers \
                 are the file's)"
            ))),
        }
    }

    /// Reads the config file at `path`.
    pub fn from_file(path: &Path) -> Result<(Settings, Format), ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Settings::from_file_text(path, &text)
    }

    /// `self` with every setting `over` gives replacing ours (the command line over the file).
    pub fn overridden_by(&self, over: &Settings) -> Settings {
        let table = |s: &Settings| {
            toml::Table::try_from(s).expect("every Settings field serializes to a TOML value")
        };
        let mut merged = table(self);
        merged.extend(table(over));
        merged
            .try_into()
            .expect("a table from two valid Settings is valid")
    }

    /// The settings as a TOML document (only those given).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every Settings field serializes to a TOML value")
    }

    /// Checks what the types do not: called once the command line is merged.
    pub fn check(&self) -> Result<(), String> {
        if self.handshake_timeout == Some(0) {
            return Err("handshake_timeout: must be at least 1 second".into());
        }
        if let Some(n) = &self.name {
            v4v::names::validate(n).map_err(|e| format!("name: {e}"))?;
        }
        for n in self.publish_names.iter().flat_map(|l| &l.0) {
            v4v::names::validate(n).map_err(|e| format!("publish_names: {e}"))?;
        }
        Ok(())
    }
}

/// The old `key = value` file `text` rewritten as TOML, line for line (the rule is in the module
/// docs); `None` when some line is neither blank, a comment nor `key = value`.
pub fn migrate_legacy(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let (body, comment) = match line.find('#') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        if body.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (k, v) = body.split_once('=')?;
        let key = k.trim().replace('-', "_");
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return None;
        }
        let v = v.trim();
        let number = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        let value = if (number && key != "socket_mode") || v == "true" || v == "false" {
            v.to_string()
        } else if v.starts_with('"') {
            // Already a TOML string (a file half way through its migration).
            v.to_string()
        } else {
            toml::Value::String(v.to_string()).to_string()
        };
        out.push_str(&format!("{key} = {value}"));
        if !comment.is_empty() {
            out.push(' ');
            out.push_str(comment);
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<(Settings, Format), String> {
        Settings::from_file_text(Path::new("test.conf"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn toml_file() {
        let (s, f) = read(
            "# comment\nhypervisor = \"sim:/tmp/s.sock\"\ndomid = 3\nsocket_mode = \"0660\"\n\
             ring_size = 65536\nacl_group = \"v4vadmin\"\n",
        )
        .expect("valid");
        assert_eq!(f, Format::Toml);
        assert_eq!(s.hypervisor.as_deref(), Some("sim:/tmp/s.sock"));
        assert_eq!(s.domid, Some(3));
        assert_eq!(s.socket_mode, Some(Mode(0o660)));
        assert_eq!(s.ring_size, Some(65536));
        assert_eq!(s.acl_group.as_deref(), Some("v4vadmin"));
        assert_eq!(s.window, None);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = read("domid = 3\n\nring_sise = 4096\n").expect_err("unknown key");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("ring_sise"), "{e}");
        assert!(e.starts_with("config test.conf: "), "{e}");
        assert!(!e.contains("old `key"), "{e}");
        // The same in an old-format file.
        let e = read("hypervisor = xen\n# c\nring-sise = 4096\n").expect_err("unknown key");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("ring_sise"), "{e}");
        assert!(e.contains("old `key = value` format"), "{e}");
    }

    #[test]
    fn wrong_types_are_errors_with_their_line() {
        let e = read("domid = 3\nring_size = \"big\"\n").expect_err("string for a number");
        assert!(e.contains("line 2"), "{e}");
        let e = read("domid = 70000\n").expect_err("out of range");
        assert!(e.contains("line 1"), "{e}");
        // TOML itself reads a bare number as decimal: the error says how to write a mode...
        let e = toml::from_str::<Settings>("socket_mode = 660\n").expect_err("decimal mode");
        assert!(e.to_string().contains("socket_mode = \"0660\""), "{e}");
        // ...and a file that is old-format too reads it as the old format did: octal.
        assert_eq!(
            read("socket_mode = 660\n").expect("old format"),
            (
                Settings {
                    socket_mode: Some(Mode(0o660)),
                    ..Settings::default()
                },
                Format::Legacy
            )
        );
        let e = read("socket_mode = \"0999\"\n").expect_err("not octal");
        assert!(e.contains("not an octal mode"), "{e}");
    }

    #[test]
    fn the_old_format_is_read_by_the_documented_rule() {
        let old = "# old\nhypervisor = xen   # the default\nsocket = /run/v4v/v4vd.sock\n\
                   socket_mode = 660\nring-size = 262144\nacl_group = v4vadmin\n\
                   handshake_timeout = 10\n";
        let (s, f) = read(old).expect("old format");
        assert_eq!(f, Format::Legacy);
        assert_eq!(s.hypervisor.as_deref(), Some("xen"));
        assert_eq!(s.socket.as_deref(), Some(Path::new("/run/v4v/v4vd.sock")));
        assert_eq!(s.socket_mode, Some(Mode(0o660)));
        assert_eq!(s.ring_size, Some(262144));
        assert_eq!(s.acl_group.as_deref(), Some("v4vadmin"));
        assert_eq!(s.handshake_timeout, Some(10));
        // The rewrite is TOML that reads back the same, comments and lines kept.
        let new = migrate_legacy(old).expect("old format");
        assert_eq!(new.lines().count(), old.lines().count());
        assert!(new.contains("hypervisor = \"xen\" # the default"), "{new}");
        assert_eq!(read(&new).expect("TOML"), (s, Format::Toml));
        assert_eq!(
            migrate_legacy("a-flag = true\nmode = x y\n").as_deref(),
            Some("a_flag = true\nmode = \"x y\"\n")
        );
        assert_eq!(migrate_legacy("no equals sign\n"), None);
    }

    #[test]
    fn names_are_a_list_or_a_string_of_names_and_are_checked() {
        let want = Some(NameList(vec!["web".into(), "backup".into()]));
        let (s, f) = read("name = \"db\"\npublish_names = [\"web\", \"backup\"]\n").unwrap();
        assert_eq!(
            (s.name.as_deref(), &s.publish_names, f),
            (Some("db"), &want, Format::Toml)
        );
        let (s, f) = read("publish_names = web backup\n").unwrap();
        assert_eq!((&s.publish_names, f), (&want, Format::Legacy));
        assert_eq!("web, backup".parse::<NameList>().ok(), want);
        let (s, _) = read("publish_names = [\"web\", \"no/slash\"]\n").unwrap();
        assert!(s.check().unwrap_err().starts_with("publish_names: "));
        let (s, _) = read("name = \"\"\n").unwrap();
        assert!(s.check().unwrap_err().starts_with("name: "));
    }

    #[test]
    fn text_that_is_neither_format_gets_the_toml_error() {
        let e = read("domid = 3\nthis is not a setting\n").expect_err("garbage");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("old `key"), "{e}");
    }

    #[test]
    fn the_command_line_wins() {
        let file = Settings {
            domid: Some(1),
            ring_size: Some(4096),
            ..Settings::default()
        };
        let cli = Settings {
            domid: Some(2),
            socket_mode: Some(Mode(0o600)),
            ..Settings::default()
        };
        let m = file.overridden_by(&cli);
        assert_eq!(m.domid, Some(2));
        assert_eq!(m.ring_size, Some(4096));
        assert_eq!(m.socket_mode, Some(Mode(0o600)));
    }

    #[test]
    fn the_shipped_config_file_is_toml() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/v4vd.conf");
        let (_, f) = Settings::from_file(&path).expect("valid");
        assert_eq!(f, Format::Toml);
    }

    proptest::proptest! {
        /// Any old-format file of known keys reads the same as its rewrite, and the rewrite is
        /// TOML.
        #[test]
        fn migration_round_trips(
            domid in proptest::option::of(0u16..0x7ff0),
            ring in proptest::option::of(4096u32..1 << 24),
            mode in proptest::option::of(0u32..=0o777),
            path in proptest::option::of("/[a-z0-9 ./_-]{1,30}"),
            group in proptest::option::of("[a-z_][a-z0-9_-]{0,15}"),
        ) {
            let mut old = String::from("# generated\n");
            if let Some(d) = domid { old.push_str(&format!("domid = {d}\n")); }
            if let Some(r) = ring { old.push_str(&format!("ring-size = {r}\n")); }
            if let Some(m) = mode { old.push_str(&format!("socket_mode = {m:o}\n")); }
            if let Some(p) = &path { old.push_str(&format!("socket = {p}\n")); }
            if let Some(g) = &group { old.push_str(&format!("acl_group = {g}\n")); }
            let (s, _) = read(&old).expect("old format");
            proptest::prop_assert_eq!(s.domid, domid);
            proptest::prop_assert_eq!(s.ring_size, ring);
            proptest::prop_assert_eq!(s.socket_mode, mode.map(Mode));
            proptest::prop_assert_eq!(s.socket.clone(), path.as_ref().map(|p| PathBuf::from(p.trim())));
            proptest::prop_assert_eq!(s.acl_group.clone(), group);
            let new = migrate_legacy(&old).expect("old format");
            proptest::prop_assert_eq!(read(&new).expect("TOML"), (s, Format::Toml));
        }
    }
}
