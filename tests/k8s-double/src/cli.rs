//! The command line, parsed the way the real `k8s` (cobra + pflag) parses it, but only the commands and flags
//! cairn's contract documents. Anything else is refused with the real CLI's kind of message.

use std::fmt;
use std::time::Duration;

/// `--output-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
    Yaml,
}

/// `bootstrap` and `join-cluster` options (both commands take the same flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOpts {
    pub file: String,
    pub name: String,
    pub address: String,
    pub timeout: Duration,
    pub format: Format,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Bootstrap(NodeOpts),
    JoinCluster {
        token: String,
        opts: NodeOpts,
    },
    Status {
        wait_ready: bool,
        timeout: Duration,
        format: Format,
    },
    /// The hidden `local-node-status` (k8sd cmd/k8s/k8s_local_node_status.go): `--output-format` only.
    LocalNodeStatus {
        format: Format,
    },
}

/// What was received, for the console: the command and its flags as `--flag value`, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown(pub Vec<String>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// A usage error; `Display` is the real CLI's message without the `Error: ` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageError {
    NoCommand,
    UnknownCommand(String),
    UnknownFlag(String),
    UnknownShorthand(String),
    NeedsArgument(String),
    GivenTwice(String),
    InvalidBool { flag: String, value: String },
    InvalidDuration { flag: String, value: String },
    UnknownFormat(String),
    Args { want: usize, got: usize },
    Required(Vec<&'static str>),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::NoCommand => {
                write!(
                    f,
                    "a command is required: bootstrap, join-cluster, status or local-node-status"
                )
            }
            UsageError::UnknownCommand(c) => write!(f, "unknown command {c:?} for \"k8s\""),
            UsageError::UnknownFlag(name) => write!(f, "unknown flag: --{name}"),
            UsageError::UnknownShorthand(arg) => {
                let c = arg.chars().nth(1).unwrap_or('-');
                write!(f, "unknown shorthand flag: '{c}' in {arg}")
            }
            UsageError::NeedsArgument(name) => write!(f, "flag needs an argument: --{name}"),
            // pflag would keep the last value; a double that did so would hide an agent bug.
            UsageError::GivenTwice(name) => write!(f, "flag --{name} given more than once"),
            UsageError::InvalidBool { flag, value } => write!(
                f,
                "invalid argument {value:?} for \"--{flag}\" flag: strconv.ParseBool: parsing {value:?}: invalid syntax"
            ),
            UsageError::InvalidDuration { flag, value } => write!(
                f,
                "invalid argument {value:?} for \"--{flag}\" flag: time: invalid duration {value:?}"
            ),
            UsageError::UnknownFormat(v) => write!(
                f,
                "Unknown --output-format {v:?}. It must be one of \"plain\" (default), \"json\" or \"yaml\"."
            ),
            UsageError::Args { want, got } => write!(f, "accepts {want} arg(s), received {got}"),
            UsageError::Required(names) => {
                let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                write!(f, "required flag(s) {} not set", quoted.join(", "))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Duration,
}

/// The flags of each command: name, kind, required by the double.
///
/// `--file`, `--name` and `--address` are optional for the real CLI (it falls back to defaults, the hostname and
/// the interface address); cairn must always pass them, so the double requires them.
const NODE_FLAGS: &[(&str, Kind, bool)] = &[
    ("file", Kind::Str, true),
    ("name", Kind::Str, true),
    ("address", Kind::Str, true),
    ("timeout", Kind::Duration, false),
    ("output-format", Kind::Str, false),
];
const STATUS_FLAGS: &[(&str, Kind, bool)] = &[
    ("wait-ready", Kind::Bool, false),
    ("timeout", Kind::Duration, false),
    ("output-format", Kind::Str, false),
];
/// k8sd cmd/k8s/k8s_local_node_status.go declares `--output-format` and nothing else: no `--timeout`.
const LOCAL_NODE_STATUS_FLAGS: &[(&str, Kind, bool)] = &[("output-format", Kind::Str, false)];

/// The real CLI's default `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

struct Parsed {
    values: Vec<(&'static str, String)>,
    positionals: Vec<String>,
    shown: Shown,
}

impl Parsed {
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `args` (without the program name). [`Shown`] never holds a join token, only its digest.
pub fn parse(args: &[String]) -> Result<(Command, Shown), UsageError> {
    let Some(first) = args.first() else {
        return Err(UsageError::NoCommand);
    };
    let (flags, positional_count) = match first.as_str() {
        "bootstrap" => (NODE_FLAGS, 0),
        "join-cluster" => (NODE_FLAGS, 1),
        "status" => (STATUS_FLAGS, 0),
        "local-node-status" => (LOCAL_NODE_STATUS_FLAGS, 0),
        other if other.starts_with("--") => {
            let name = other[2..].split('=').next().unwrap_or_default();
            return Err(UsageError::UnknownFlag(name.to_string()));
        }
        other if other.starts_with('-') && other.len() > 1 => {
            return Err(UsageError::UnknownShorthand(other.to_string()));
        }
        other => return Err(UsageError::UnknownCommand(other.to_string())),
    };
    // Only join-cluster takes a positional: the token, a secret.
    let mut parsed = parse_flags(first, &args[1..], flags, positional_count > 0)?;
    if parsed.positionals.len() != positional_count {
        return Err(UsageError::Args {
            want: positional_count,
            got: parsed.positionals.len(),
        });
    }
    let missing: Vec<&'static str> = flags
        .iter()
        .filter(|(name, _, required)| *required && parsed.get(name).is_none())
        .map(|(name, _, _)| *name)
        .collect();
    if !missing.is_empty() {
        // cobra lists them sorted.
        let mut missing = missing;
        missing.sort_unstable();
        return Err(UsageError::Required(missing));
    }
    let format = match parsed.get("output-format") {
        None | Some("plain") => Format::Plain,
        Some("json") => Format::Json,
        Some("yaml") => Format::Yaml,
        Some(other) => return Err(UsageError::UnknownFormat(other.to_string())),
    };
    let timeout = match parsed.get("timeout") {
        Some(v) => parse_duration(v).ok_or_else(|| UsageError::InvalidDuration {
            flag: "timeout".into(),
            value: v.to_string(),
        })?,
        None => DEFAULT_TIMEOUT,
    };
    let command = match first.as_str() {
        "status" => Command::Status {
            wait_ready: parsed.get("wait-ready") == Some("true"),
            timeout,
            format,
        },
        "local-node-status" => Command::LocalNodeStatus { format },
        kind => {
            let opts = NodeOpts {
                file: parsed.get("file").unwrap_or_default().to_string(),
                name: parsed.get("name").unwrap_or_default().to_string(),
                address: parsed.get("address").unwrap_or_default().to_string(),
                timeout,
                format,
            };
            if kind == "bootstrap" {
                Command::Bootstrap(opts)
            } else {
                Command::JoinCluster {
                    token: parsed.positionals.remove(0),
                    opts,
                }
            }
        }
    };
    Ok((command, parsed.shown))
}

fn parse_flags(
    command: &str,
    args: &[String],
    flags: &[(&'static str, Kind, bool)],
    hide_positionals: bool,
) -> Result<Parsed, UsageError> {
    let show_positional = |arg: &str| {
        if hide_positionals {
            format!("token-sha256={}", sha256_hex(arg.as_bytes()))
        } else {
            show(arg)
        }
    };
    let mut parsed = Parsed {
        values: Vec::new(),
        positionals: Vec::new(),
        shown: Shown(vec![command.to_string()]),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            // pflag: everything after `--` is positional.
            for rest in &args[i..] {
                parsed.positionals.push(rest.clone());
                parsed.shown.0.push(show_positional(rest));
            }
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(&(name, kind, _)) = flags.iter().find(|(n, _, _)| *n == name) else {
                return Err(UsageError::UnknownFlag(name.to_string()));
            };
            if parsed.get(name).is_some() {
                return Err(UsageError::GivenTwice(name.to_string()));
            }
            let value = match kind {
                Kind::Bool => match inline.as_deref() {
                    None => "true".to_string(),
                    Some(v) => parse_bool(v)
                        .ok_or_else(|| UsageError::InvalidBool {
                            flag: name.to_string(),
                            value: v.to_string(),
                        })?
                        .to_string(),
                },
                Kind::Str | Kind::Duration => {
                    let v = match inline {
                        Some(v) => v,
                        // Stricter than pflag, which would take `--name` as the value of `--file`.
                        None => match args.get(i) {
                            Some(next) if !next.starts_with("--") => {
                                i += 1;
                                next.clone()
                            }
                            _ => return Err(UsageError::NeedsArgument(name.to_string())),
                        },
                    };
                    if v.is_empty() {
                        return Err(UsageError::NeedsArgument(name.to_string()));
                    }
                    v
                }
            };
            if kind == Kind::Bool {
                parsed.shown.0.push(if value == "true" {
                    format!("--{name}")
                } else {
                    format!("--{name}=false")
                });
            } else {
                parsed.shown.0.push(format!("--{name} {}", show(&value)));
            }
            parsed.values.push((name, value));
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(UsageError::UnknownShorthand(arg.clone()));
        } else {
            parsed.positionals.push(arg.clone());
            parsed.shown.0.push(show_positional(arg));
        }
    }
    Ok(parsed)
}

/// A value as shown on the console: quoted only when it would not read back as one word.
fn show(value: &str) -> String {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        format!("{value:?}")
    } else {
        value.to_string()
    }
}

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for non-negative durations: `90s`, `5m`, `1h30m`, `1.5s`, `300ms`, `0`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * nanos_per;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "5x", "m", "1..2s", "-5s", "5 m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn flags_take_both_forms_and_show_in_order() {
        let (cmd, shown) = parse(&args(&[
            "bootstrap",
            "--name=n1",
            "--address",
            "10.0.0.1",
            "--file",
            "/f.json",
            "--timeout=2m",
            "--output-format",
            "json",
        ]))
        .expect("valid");
        assert_eq!(
            cmd,
            Command::Bootstrap(NodeOpts {
                file: "/f.json".into(),
                name: "n1".into(),
                address: "10.0.0.1".into(),
                timeout: Duration::from_secs(120),
                format: Format::Json,
            })
        );
        assert_eq!(
            shown.to_string(),
            "bootstrap --name n1 --address 10.0.0.1 --file /f.json --timeout 2m --output-format json"
        );
    }

    #[test]
    fn the_token_is_shown_as_its_digest_only() {
        let (cmd, shown) = parse(&args(&[
            "join-cluster",
            "s3cret",
            "--file=/j.json",
            "--name",
            "w1",
            "--address",
            "10.0.0.2",
        ]))
        .expect("valid");
        assert!(matches!(cmd, Command::JoinCluster { ref token, .. } if token == "s3cret"));
        // sha256("s3cret"), as `printf s3cret | sha256sum` prints it.
        assert_eq!(
            shown.to_string(),
            "join-cluster token-sha256=\
             1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0 \
             --file /j.json --name w1 --address 10.0.0.2"
        );
        assert!(!shown.to_string().contains("s3cret"));
    }

    #[test]
    fn usage_errors_read_like_cobra() {
        let err = |v: &[&str]| parse(&args(v)).expect_err("must fail").to_string();
        assert_eq!(err(&["status", "--foo"]), "unknown flag: --foo");
        assert_eq!(err(&["status", "--foo=1"]), "unknown flag: --foo");
        assert_eq!(err(&["status", "-w"]), "unknown shorthand flag: 'w' in -w");
        assert_eq!(
            err(&["get-join-token"]),
            "unknown command \"get-join-token\" for \"k8s\""
        );
        assert_eq!(
            err(&["bootstrap", "--name", "n"]),
            "required flag(s) \"address\", \"file\" not set"
        );
        assert_eq!(
            err(&["bootstrap", "--file"]),
            "flag needs an argument: --file"
        );
        assert_eq!(
            err(&["bootstrap", "--file", "--name", "n"]),
            "flag needs an argument: --file"
        );
        assert_eq!(err(&["status", "extra"]), "accepts 0 arg(s), received 1");
        assert_eq!(
            err(&[
                "join-cluster",
                "--file",
                "f",
                "--name",
                "n",
                "--address",
                "a"
            ]),
            "accepts 1 arg(s), received 0"
        );
        assert_eq!(
            err(&["status", "--wait-ready=maybe"]),
            "invalid argument \"maybe\" for \"--wait-ready\" flag: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert_eq!(
            err(&["status", "--timeout", "5"]),
            "invalid argument \"5\" for \"--timeout\" flag: time: invalid duration \"5\""
        );
        assert_eq!(
            err(&["status", "--output-format", "xml"]),
            "Unknown --output-format \"xml\". It must be one of \"plain\" (default), \"json\" or \"yaml\"."
        );
        assert_eq!(
            err(&["local-node-status", "--timeout", "5s"]),
            "unknown flag: --timeout"
        );
        assert_eq!(
            err(&["local-node-status", "now"]),
            "accepts 0 arg(s), received 1"
        );
        assert_eq!(
            err(&["status", "--timeout", "1m", "--timeout=2m"]),
            "flag --timeout given more than once"
        );
    }
}
