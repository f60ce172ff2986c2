//! Reading snap assertion files (`NAME.assert`, as `snap download` writes them): a stream of assertions, each a
//! block of `name: value` headers, an optional body of `body-length` bytes and a signature, separated by blank
//! lines (the layout snapd's `asserts` package decodes).
//!
//! Hand-written because no Rust crate reads this format. Only the top-level single-line headers are kept: cairn
//! needs the snap-declaration's name and id and the snap-revision's digest, size and revision, and checks that
//! they agree with the file and its pin. Signatures are snapd's to verify, against its trusted root keys, when the
//! agent acknowledges the file on the node (`snap ack`); this module never claims an assertion is authentic.

use std::collections::BTreeMap;

/// The largest assertion file read: the ones `snap download` writes are a few KiB.
pub const MAX_FILE: usize = 1 << 20;
/// The most assertions one file may hold.
pub const MAX_ASSERTIONS: usize = 64;

/// One assertion's top-level single-line headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub headers: BTreeMap<String, String>,
}

impl Assertion {
    pub fn kind(&self) -> &str {
        self.header("type").unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset}: {message}")]
pub struct AssertionError {
    pub offset: usize,
    pub message: String,
}

fn fail<T>(offset: usize, message: impl Into<String>) -> Result<T, AssertionError> {
    Err(AssertionError {
        offset,
        message: message.into(),
    })
}

/// Every assertion of a file, in order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Assertion>, AssertionError> {
    if bytes.len() > MAX_FILE {
        return fail(
            MAX_FILE,
            format!("larger than {MAX_FILE} bytes: not an assertion file"),
        );
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if out.len() == MAX_ASSERTIONS {
            return fail(at, format!("more than {MAX_ASSERTIONS} assertions"));
        }
        let Some(head_len) = find(&bytes[at..], b"\n\n") else {
            return fail(at, "headers without the blank line that ends them");
        };
        let headers = headers(&bytes[at..at + head_len], at)?;
        at += head_len + 2;
        let body_length = match headers.get("body-length") {
            None => 0,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if v == &n.to_string() => n,
                _ => return fail(at, format!("body-length `{v}` is not a number")),
            },
        };
        if body_length > 0 {
            let end = at
                .checked_add(body_length)
                .filter(|&e| e <= bytes.len())
                .map_or_else(|| fail(at, "the body is shorter than its body-length"), Ok)?;
            if !bytes[end..].starts_with(b"\n\n") {
                return fail(end, "no blank line after the body");
            }
            at = end + 2;
        }
        // The signature runs to the next blank line, or to the end.
        let sig_len = find(&bytes[at..], b"\n\n").unwrap_or(bytes.len() - at);
        if sig_len == 0 || bytes[at..at + sig_len].iter().all(u8::is_ascii_whitespace) {
            return fail(at, "an assertion without a signature");
        }
        at += sig_len;
        while at < bytes.len() && bytes[at] == b'\n' {
            at += 1;
        }
        out.push(Assertion { headers });
    }
    if out.is_empty() {
        return fail(0, "no assertion in the file");
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The top-level headers of one block; continuation lines (indented: multi-line values, lists, maps) are skipped.
fn headers(block: &[u8], base: usize) -> Result<BTreeMap<String, String>, AssertionError> {
    let Ok(text) = std::str::from_utf8(block) else {
        return fail(base, "headers that are not UTF-8");
    };
    let mut out = BTreeMap::new();
    let mut offset = base;
    for line in text.split('\n') {
        let here = offset;
        offset += line.len() + 1;
        if line.starts_with(' ') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return fail(here, format!("header line `{}` without `:`", shown(line)));
        };
        if !valid_name(name) {
            return fail(here, format!("`{}` is not a header name", shown(name)));
        }
        // `name:` alone starts a multi-line value, which cairn does not need.
        let value = value.strip_prefix(' ').unwrap_or(value);
        if out.insert(name.to_string(), value.to_string()).is_some() {
            return fail(here, format!("header `{name}` repeated"));
        }
    }
    if !out.contains_key("type") {
        return fail(base, "an assertion without a `type` header");
    }
    Ok(out)
}

/// snapd's header names: a lower-case letter, then letters, digits and single dashes.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && !name.contains("--")
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A line as it may go into a message: bounded, control characters escaped.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    cut.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "type: account-key\nauthority-id: canonical\npublic-key-sha3-384: abc\nbody-length: 5\n\nBODY!\n\nAcLBUgQAAQoABgUC\nSIG2\n\ntype: snap-declaration\nauthority-id: canonical\nsnap-id: ID123\nsnap-name: hello\naliases:\n  -\n    name: hi\n\nSIGNATURE\n\ntype: snap-revision\nsnap-id: ID123\nsnap-revision: 42\nsnap-sha3-384: pin\nsnap-size: 4096\n\nSIG\n";

    #[test]
    fn reads_every_assertion_and_its_single_line_headers() {
        let all = parse(SAMPLE.as_bytes()).expect("parse");
        let kinds: Vec<&str> = all.iter().map(Assertion::kind).collect();
        assert_eq!(kinds, ["account-key", "snap-declaration", "snap-revision"]);
        assert_eq!(all[1].header("snap-name"), Some("hello"));
        assert_eq!(all[1].header("aliases"), Some(""));
        assert_eq!(all[2].header("snap-size"), Some("4096"));
        assert_eq!(all[2].header("snap-sha3-384"), Some("pin"));
    }

    #[test]
    fn refuses_what_snapd_would_refuse_with_its_position() {
        for (text, offset, needle) in [
            ("", 0, "no assertion"),
            ("type: a\n", 0, "blank line"),
            ("type: a\nbad line\n\nSIG", 8, "without `:`"),
            ("type: a\nType: b\n\nSIG", 8, "not a header name"),
            ("type: a\ntype: b\n\nSIG", 8, "repeated"),
            ("name: a\n\nSIG", 0, "`type`"),
            ("type: a\n\n", 9, "without a signature"),
            ("type: a\nbody-length: 20\n\nBODY\n\nSIG", 25, "shorter"),
            ("type: a\nbody-length: x\n\nSIG", 24, "not a number"),
            ("type: a\nbody-length: 2\n\nBODYSIG", 26, "no blank line"),
        ] {
            let e = parse(text.as_bytes()).expect_err(text);
            assert_eq!(e.offset, offset, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the bytes, the parser answers (no panic, no endless loop), and an error's offset is inside them.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Err(e) = parse(&bytes) {
                prop_assert!(e.offset <= bytes.len().max(MAX_FILE));
            }
        }

        /// Assertions written the way snapd writes them read back with their headers.
        #[test]
        fn reads_back_what_is_written(
            blocks in proptest::collection::vec(
                (
                    proptest::collection::btree_map("[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", "[ -~]{0,20}", 0..5),
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "[A-Za-z0-9+/=]{1,30}(\n[A-Za-z0-9+/=]{1,30}){0,3}",
                ),
                1..5,
            )
        ) {
            let mut file = Vec::new();
            let mut expected = Vec::new();
            for (mut headers, body, signature) in blocks {
                headers.remove("body-length");
                headers.insert("type".into(), "snap-revision".into());
                let mut block = String::new();
                for (k, v) in &headers {
                    block.push_str(&format!("{k}: {v}\n"));
                }
                let mut with_length = headers.clone();
                if !body.is_empty() {
                    block.push_str(&format!("body-length: {}\n", body.len()));
                    with_length.insert("body-length".into(), body.len().to_string());
                }
                file.extend_from_slice(block.as_bytes());
                file.push(b'\n');
                if !body.is_empty() {
                    file.extend_from_slice(&body);
                    file.extend_from_slice(b"\n\n");
                }
                file.extend_from_slice(signature.as_bytes());
                file.extend_from_slice(b"\n\n");
                expected.push(with_length);
            }
            let parsed = parse(&file).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<_> = parsed.into_iter().map(|a| a.headers).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
