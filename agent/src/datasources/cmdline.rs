//! The kernel command line: `cairn.instance=URL` (source 1), and the parsing of command line values.
//!
//! Parsing follows the kernel's own (`next_arg` in `lib/cmdline.c`): arguments are separated by whitespace
//! outside double quotes; a value may be quoted (`key="a b"`) and so may a whole argument (`"key=a b"`), and
//! those surrounding quotes are dropped, quotes elsewhere are kept. In keys `-` and `_` are the same (as the
//! kernel and systemd compare them). The last occurrence of a key wins. Parsing stops at a bare `--`: what
//! follows is for init, not for the kernel (systemd ignores it too). A key without `=` has the value `""`.
//!
//! The URL: `https://` to any host is fetched, the server's certificate verified (see [`super::http`]: the
//! Mozilla root set and the target's CA bundles are trusted; a refused certificate is an error saying why,
//! never retried); `http://` to a loopback host (`localhost`, 127.0.0.0/8, `[::1]`) is fetched too (tests);
//! `http://` to any other host is refused (instance data may carry secrets, and plain HTTP off the machine can
//! be read or changed on the way). Only a `200` answer is instance data; any other status (after the client's
//! retries for `5xx`) is an error naming the URL. Redirects are not followed.

use cairn_profile::contract::INSTANCE_KEY as KEY;

use super::http::{self, Method, Scheme, Url};
use super::{Config, DatasourceError, Found, NetworkSource, SourceKind, to_text};

/// The value of `key` on a kernel command line (the last occurrence), without its quotes.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    args(cmdline)
        .into_iter()
        .rfind(|(k, _)| same_key(k, key))
        .map(|(_, v)| v.unwrap_or_default().to_string())
}

fn same_key(a: &str, b: &str) -> bool {
    let norm = |c: char| if c == '-' { '_' } else { c };
    a.len() == b.len() && a.chars().map(norm).eq(b.chars().map(norm))
}

/// The arguments as `(key, value)`, quotes removed as the kernel removes them.
fn args(cmdline: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut rest = cmdline.trim_start_matches(|c: char| c.is_ascii_whitespace());
    while !rest.is_empty() {
        let quoted = rest.starts_with('"');
        if quoted {
            rest = &rest[1..];
        }
        let mut in_quote = quoted;
        let mut equals = None;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c.is_ascii_whitespace() && !in_quote {
                end = i;
                break;
            }
            if equals.is_none() && c == '=' {
                equals = Some(i);
            }
            if c == '"' {
                in_quote = !in_quote;
            }
        }
        let arg = &rest[..end];
        rest = rest[end..].trim_start_matches(|c: char| c.is_ascii_whitespace());

        let (mut key, mut value) = match equals {
            Some(i) => (&arg[..i], Some(&arg[i + 1..])),
            None => (arg, None),
        };
        let mut trailing_dropped = false;
        if let Some(v) = value
            && let Some(inner) = v.strip_prefix('"')
        {
            value = Some(inner.strip_suffix('"').unwrap_or(inner));
            trailing_dropped = true;
        }
        if quoted && !trailing_dropped {
            match value {
                Some(v) => value = Some(v.strip_suffix('"').unwrap_or(v)),
                None => key = key.strip_suffix('"').unwrap_or(key),
            }
        }
        if !quoted && key == "--" && value.is_none() {
            break;
        }
        out.push((key, value));
    }
    out
}

pub(super) fn name(url: &str) -> String {
    format!("{KEY}={url}")
}

/// `Some` when the command line names an instance URL this build can fetch; an error when it names one it
/// cannot.
pub(super) fn detect(cmdline: &str) -> Result<Option<NetworkSource>, DatasourceError> {
    let Some(url) = cmdline_value(cmdline, KEY) else {
        return Ok(None);
    };
    check(&url)?;
    Ok(Some(NetworkSource::Url(url)))
}

/// The URL, parsed, if this build may fetch it.
fn check(url: &str) -> Result<Url, DatasourceError> {
    let fail = |message: &str| DatasourceError::new(name(url), message);
    if url.is_empty() {
        return Err(fail("no URL given"));
    }
    let scheme = |prefix: &str| {
        url.get(..prefix.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(prefix))
    };
    if !scheme("https://") && !scheme("http://") {
        return Err(fail("not an https:// URL (or http:// to a loopback host)"));
    }
    let parsed = Url::parse(url).map_err(|e| fail(&format!("not a valid URL: {e}")))?;
    if parsed.scheme == Scheme::Http && !parsed.is_loopback() {
        return Err(fail(
            "plain http is refused for a host that is not loopback (localhost, 127.0.0.0/8, [::1]): \
             instance data may carry secrets",
        ));
    }
    Ok(parsed)
}

/// The network phase for source 1.
pub(super) fn fetch(url: &str, cfg: &Config) -> Result<Found, DatasourceError> {
    let parsed = check(url)?;
    let name = name(url);
    let response = http::request(Method::Get, &parsed, &[], &cfg.http_policy())
        .map_err(|e| DatasourceError::new(&name, e.to_string()))?;
    if response.status != 200 {
        return Err(DatasourceError::new(
            &name,
            format!("HTTP {}", response.status_text()),
        ));
    }
    let text = to_text(response.body, &name)?;
    Ok(Found {
        source: SourceKind::Cmdline,
        name,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_values() {
        let line = "console=ttyS0 cairn.instance=\"http://127.0.0.1:8080/a b\" quiet\n";
        assert_eq!(
            cmdline_value(line, "cairn.instance").as_deref(),
            Some("http://127.0.0.1:8080/a b")
        );
        assert_eq!(cmdline_value(line, "console").as_deref(), Some("ttyS0"));
        assert_eq!(cmdline_value(line, "quiet").as_deref(), Some(""));
        assert_eq!(cmdline_value(line, "cairn"), None);
        assert_eq!(cmdline_value(line, "instance"), None);
        assert_eq!(cmdline_value("", "quiet"), None);
        assert_eq!(cmdline_value("  \t\n", "quiet"), None);
    }

    #[test]
    fn parses_like_the_kernel() {
        // A whole argument in quotes.
        assert_eq!(
            cmdline_value("\"cairn.instance=http://h/a b\" x", KEY).as_deref(),
            Some("http://h/a b")
        );
        // Quotes in the middle stay; they still protect spaces.
        assert_eq!(
            cmdline_value("a=x\"y z\"w b=1", "a").as_deref(),
            Some("x\"y z\"w")
        );
        // An unclosed quote runs to the end.
        assert_eq!(cmdline_value("a=\"x y z", "a").as_deref(), Some("x y z"));
        // The value holds everything after the first '='.
        assert_eq!(
            cmdline_value("root=UUID=1234 ro", "root").as_deref(),
            Some("UUID=1234")
        );
        // The last one wins; '-' and '_' are the same in keys.
        assert_eq!(
            cmdline_value(
                "cairn.datasource=a cairn.data-source=b",
                "cairn.data_source"
            )
            .as_deref(),
            Some("b")
        );
        // Everything after a bare "--" is for init.
        assert_eq!(cmdline_value("ro -- cairn.instance=http://x/", KEY), None);
        assert_eq!(cmdline_value("\"--\" a=1", "a").as_deref(), Some("1"));
        assert_eq!(cmdline_value("a=\"\"", "a").as_deref(), Some(""));
        assert_eq!(cmdline_value("\"quiet\"", "quiet").as_deref(), Some(""));
        assert_eq!(cmdline_value("a=é b=ü", "b").as_deref(), Some("ü"));
    }

    #[test]
    fn checks_urls_before_any_fetch() {
        let ok = |line: &str| detect(line).unwrap();
        let err = |line: &str| detect(line).unwrap_err().to_string();
        assert_eq!(ok("quiet"), None);
        for url in [
            "http://127.0.0.1:8080/a",
            "http://localhost/x",
            "http://[::1]:9/x",
            "http://127.1.2.3/",
            "https://example.com/i.toml",
            "HTTPS://10.0.0.1:8443/i.toml",
            "https://[2001:db8::1]/x",
        ] {
            assert_eq!(
                ok(&format!("{KEY}={url}")),
                Some(NetworkSource::Url(url.to_string()))
            );
        }
        assert!(err("cairn.instance=\"https://a b/\"").contains("not a valid URL"));
        assert!(err("cairn.instance=https://u:p@h/").contains("not a valid URL"));
        let e = err("cairn.instance=http://10.0.0.1/i.toml");
        assert!(
            e.starts_with("cairn.instance=http://10.0.0.1/i.toml: plain http is refused"),
            "{e}"
        );
        assert!(err("cairn.instance=ftp://127.0.0.1/x").contains("not an https:// URL"));
        assert!(err("cairn.instance=http://[::1/x").contains("not a valid URL"));
        assert_eq!(err("cairn.instance"), "cairn.instance=: no URL given");
        assert_eq!(err("cairn.instance="), "cairn.instance=: no URL given");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    /// One argument as written, its key, and its value once unquoted (`None`: no `=`).
    fn arg() -> impl Strategy<Value = (String, String, Option<String>)> {
        // Few keys, so that they repeat, with `-` and `_` both.
        let key = "[ab]([-_.][ab])?";
        prop_oneof![
            key.prop_map(|k| (k.clone(), k, None)),
            (key, "[^\\s\"]{0,8}").prop_map(|(k, v)| (format!("{k}={v}"), k, Some(v))),
            (key, "[^\"]{0,12}").prop_map(|(k, v)| (format!("{k}=\"{v}\""), k, Some(v))),
            (key, "[^\"]{0,12}").prop_map(|(k, v)| (format!("\"{k}={v}\""), k, Some(v))),
            key.prop_map(|k| (format!("\"{k}\""), k, None)),
        ]
    }

    fn space() -> impl Strategy<Value = String> {
        "[ \t\n\x0c\r]{1,3}"
    }

    /// A command line of generated arguments, and the arguments as the kernel reads them.
    fn line() -> impl Strategy<Value = (String, Vec<(String, Option<String>)>)> {
        (
            "[ \t\n]{0,2}",
            prop::collection::vec((arg(), space()), 0..8),
            "[ \t\n]{0,2}",
        )
            .prop_map(|(lead, args, end)| {
                let mut text = lead;
                let mut parsed = Vec::new();
                for ((written, key, value), space) in args {
                    text.push_str(&written);
                    text.push_str(&space);
                    parsed.push((key, value));
                }
                text.push_str(&end);
                (text, parsed)
            })
    }

    /// `key` with each `-` or `_` written as either.
    fn respelled(key: &str, flips: &[bool]) -> String {
        key.chars()
            .zip(flips.iter().chain(std::iter::repeat(&false)))
            .map(|(c, &flip)| match c {
                '-' | '_' if flip => '-',
                '-' | '_' => '_',
                c => c,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn never_panics(line in any::<String>(), quoted in "[a=\" \\-_\t]{0,20}", key in any::<String>()) {
            let _ = args(&line);
            let _ = cmdline_value(&line, &key);
            for (k, _) in args(&quoted) {
                prop_assert_eq!(cmdline_value(&quoted, k).is_some(), true);
            }
        }

        #[test]
        fn the_last_occurrence_wins_unquoted(
            (text, parsed) in line(),
            key in "[ab]([-_.][ab])?",
            flips in prop::collection::vec(any::<bool>(), 3),
        ) {
            let got: Vec<(String, Option<String>)> = args(&text)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect();
            prop_assert_eq!(&got, &parsed, "{:?}", text);
            let asked = respelled(&key, &flips);
            let want = parsed
                .iter()
                .rev()
                .find(|(k, _)| respelled(k, &[]) == respelled(&key, &[]))
                .map(|(_, v)| v.clone().unwrap_or_default());
            prop_assert_eq!(cmdline_value(&text, &asked), want, "{:?} {:?}", text, asked);
        }

        #[test]
        fn nothing_after_a_bare_double_dash((before, _) in line(), (after, _) in line(), key in "[ab]") {
            let text = format!("{before} -- {after} {key}=after");
            prop_assert_ne!(cmdline_value(&text, &key), Some("after".to_string()));
            prop_assert_eq!(cmdline_value(&text, &key), cmdline_value(&before, &key));
        }
    }
}
