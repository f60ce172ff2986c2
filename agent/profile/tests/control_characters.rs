//! Control characters in values that end up in a file on the node are refused, at the value's position, in
//! instance data and in the profile's fields that share its checks.

use std::path::Path;

use cairn_profile::{Error, FileContent, Instance, Profile};
use proptest::prelude::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc";
const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// (line, column, key, message) of the error, or a panic when the text is accepted.
fn instance_fails(text: &str) -> (usize, usize, String, String) {
    match Instance::parse("fw_cfg opt/cairn/instance.toml", text) {
        Ok(i) => panic!("accepted {i:?}:\n{text}"),
        Err(Error::Invalid(d)) => (d.line, d.column, d.key.clone(), d.message.clone()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn profile_fails(body: &str) -> (usize, usize, String, String) {
    let text = format!(
        "schema = 1\nname = \"n\"\nversion = \"1\"\narch = \"amd64\"\n[base]\nrock = \"localhost:5000/b@{D}\"\n{body}"
    );
    match Profile::parse(Path::new("p.toml"), text.clone()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(Error::Invalid(d)) => (d.line, d.column, d.key.clone(), d.message.clone()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn assert_control(
    got: (usize, usize, String, String),
    line: usize,
    column: usize,
    key: &str,
    c: &str,
) {
    assert_eq!(
        (got.0, got.1, got.2.as_str()),
        (line, column, key),
        "{}",
        got.3
    );
    assert!(
        got.3.starts_with(&format!("control character {c}:")),
        "{}",
        got.3
    );
}

#[test]
fn instance_fields_refuse_control_characters_at_the_value() {
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        (
            "[system]\nhostname = \"edge\\u001b7\"\n",
            2,
            12,
            "system.hostname",
            "U+001B",
        ),
        (
            "[[user]]\nname = \"o\\u0000ps\"\n",
            2,
            8,
            "user[0].name",
            "U+0000",
        ),
        (
            "[[user]]\nname = \"ops\"\ngroups = [\"wheel\", \"a\\u0007\"]\n",
            3,
            20,
            "user[0].groups[1]",
            "U+0007",
        ),
        (
            &format!("[[user]]\nname = \"ops\"\nssh-keys = [\"{KEY} ops\\u0000x\"]\n"),
            3,
            13,
            "user[0].ssh-keys[0]",
            "U+0000",
        ),
        (
            &format!("[[user]]\nname = \"ops\"\nssh-keys = [\"{KEY}\", \"{KEY} \\u001b[2J\"]\n"),
            3,
            57,
            "user[0].ssh-keys[1]",
            "U+001B",
        ),
        (
            "[[file]]\npath = \"/etc/a\\u001bb\"\ncontent = \"x\"\n",
            2,
            8,
            "file[0].path",
            "U+001B",
        ),
        (
            "[[file]]\npath = \"/etc/a\\tb\\u007f\"\ncontent = \"x\"\n",
            2,
            8,
            "file[0].path",
            "U+007F",
        ),
        (
            "[[file]]\npath = \"/etc/a\"\ncontent = \"line\\r\\n\"\n",
            3,
            11,
            "file[0].content",
            "U+000D",
        ),
        (
            "[[file]]\npath = \"/etc/a\"\ncontent = \"\"\"\nok\n\tok\n\\u001b[31m\"\"\"\n",
            3,
            11,
            "file[0].content",
            "U+001B",
        ),
        (
            "[kubernetes]\nnode-name = \"n\\u0000\"\n",
            2,
            13,
            "kubernetes.node-name",
            "U+0000",
        ),
        (
            "[kubernetes]\naddress = \"10.0.0.1\\u001b\"\n",
            2,
            11,
            "kubernetes.address",
            "U+001B",
        ),
    ];
    for (text, line, column, key, c) in cases {
        assert_control(instance_fails(text), *line, *column, key, c);
    }
}

#[test]
fn tab_and_newline_stay_where_they_belong() {
    let i = Instance::parse(
        "s",
        "[[file]]\npath = \"/etc/a\"\ncontent = \"a\\tb\\nc\\n\"\n",
    )
    .unwrap();
    assert_eq!(i.files[0].content, FileContent::Inline("a\tb\nc\n".into()));
    let k = Instance::parse(
        "s",
        &format!("[[user]]\nname = \"ops\"\nssh-keys = [\"{KEY} ops\\tlaptop\"]\n"),
    )
    .unwrap();
    assert_eq!(k.users[0].ssh_keys, [format!("{KEY} ops\tlaptop")]);
    // Line breaks in a key and a NUL in a path keep their own messages.
    let (line, column, _, message) = instance_fails(&format!(
        "[[user]]\nname = \"ops\"\nssh-keys = [\"{KEY}\\n\"]\n"
    ));
    assert_eq!(
        (line, column, message.as_str()),
        (3, 13, "one key per string: no line breaks")
    );
    let (_, _, _, message) = profile_fails("[[file]]\npath = \"/etc/a\\u0000\"\ncontent = \"x\"\n");
    assert!(
        message.ends_with("a path cannot hold a NUL byte"),
        "{message}"
    );
}

#[test]
fn profile_fields_refuse_control_characters_at_the_value() {
    // The profile's header is six lines.
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        (
            "[system]\nhostname = \"h\\u0001\"\n",
            8,
            12,
            "system.hostname",
            "U+0001",
        ),
        (
            "[[user]]\nname = \"\\u001bops\"\n",
            8,
            8,
            "user[0].name",
            "U+001B",
        ),
        (
            "[[user]]\nname = \"ops\"\ngroups = [\"g\\u0000\"]\n",
            9,
            11,
            "user[0].groups[0]",
            "U+0000",
        ),
        (
            &format!("[[user]]\nname = \"ops\"\nssh-keys = [\"{KEY} \\u001b\"]\n"),
            9,
            13,
            "user[0].ssh-keys[0]",
            "U+001B",
        ),
        (
            "[[file]]\npath = \"/etc/\\u001b\"\ncontent = \"x\"\n",
            8,
            8,
            "file[0].path",
            "U+001B",
        ),
        (
            "[[file]]\npath = \"/etc/a\"\ncontent = \"\\u0000\"\n",
            9,
            11,
            "file[0].content",
            "U+0000",
        ),
    ];
    for (body, line, column, key, c) in cases {
        assert_control(profile_fails(body), *line, *column, key, c);
    }
}

/// A TOML basic string holding `s`, every character that needs it escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_control() || c == '"' || c == '\\' {
            out.push_str(&format!("\\u{:04X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// A value: something close to valid with arbitrary characters, control characters often among them.
fn value(valid: &'static str) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(valid.to_string()),
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]",
        "[a-z0-9./:-]{0,4}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|p| p.concat())
}

fn no_control(i: &Instance) -> bool {
    let line = |s: &str| !s.chars().any(|c| c.is_control() && c != '\t');
    i.hostname.as_deref().is_none_or(line)
        && i.users.iter().all(|u| {
            line(&u.name) && u.groups.iter().all(|g| line(g)) && u.ssh_keys.iter().all(|k| line(k))
        })
        && i.files.iter().all(|f| {
            line(&f.path)
                && match &f.content {
                    FileContent::Inline(c) => {
                        !c.chars().any(|c| c.is_control() && c != '\t' && c != '\n')
                    }
                    FileContent::Source(_) => false,
                }
        })
        && i.kubernetes.node_name.as_deref().is_none_or(line)
        && i.kubernetes.address.as_deref().is_none_or(line)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(i) = Instance::parse("s", &text) {
            prop_assert!(no_control(&i), "{i:?}");
        }
    }

    #[test]
    fn no_control_character_is_accepted(
        hostname in value("edge-7"),
        name in value("ops"),
        group in value("wheel"),
        key in value(KEY),
        path in value("/etc/x"),
        content in value("a\tb\n"),
        node in value("node-1"),
        address in value("10.0.0.1"),
    ) {
        let text = format!(
            "[system]\nhostname = {}\n[[user]]\nname = {}\ngroups = [{}]\nssh-keys = [{}]\n\
             [[file]]\npath = {}\ncontent = {}\n[kubernetes]\nnode-name = {}\naddress = {}\n",
            toml_string(&hostname),
            toml_string(&name),
            toml_string(&group),
            toml_string(&key),
            toml_string(&path),
            toml_string(&content),
            toml_string(&node),
            toml_string(&address),
        );
        match Instance::parse("s", &text) {
            Ok(i) => prop_assert!(no_control(&i), "{i:?}"),
            Err(Error::Invalid(d)) => prop_assert!(d.line >= 1 && d.column >= 1),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
