use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn good() -> String {
    format!(
        r#"schema = 1
name = "edge-worker"
version = "1.0.0"
arch = "amd64"

[base]
rock = "localhost:5000/cairn/node-base:bookworm@{D}"

[[layer]]
rock = "localhost:5000/cairn/extra@{D}"

[[file]]
path = "/etc/motd"
content = "hi\n"
mode = "0640"
owner = "0:4"

[image]
formats = ["tar"]
"#
    )
}

fn parse(text: &str) -> Result<Profile, Error> {
    Profile::parse(Path::new("p.toml"), text.to_string())
}

/// Parses and expects a diagnostic; returns (line, column, key, message).
fn fail(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(Error::Invalid(d)) => (d.line, d.column, d.key.clone(), d.message.clone()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn accepts_the_contract() {
    let p = parse(&good()).unwrap();
    assert_eq!(p.name, "edge-worker");
    assert_eq!(p.arch, Arch::Amd64);
    assert_eq!(p.base.reference.repository, "cairn/node-base");
    assert_eq!(p.layers.len(), 1);
    assert_eq!(p.layers[0].key, "layer[0].rock");
    assert_eq!(p.files[0].mode, 0o640);
    assert_eq!((p.files[0].uid, p.files[0].gid), (0, 4));
    assert_eq!(p.files[0].content, FileContent::Inline("hi\n".into()));
    assert_eq!(p.formats, vec![Format::Tar]);
    assert_eq!(p.text, good());
}

#[test]
fn defaults() {
    let text = format!(
        "schema = 1\nname = \"n\"\nversion = \"1\"\narch = \"arm64\"\n[base]\nrock = \"r.io/a@{D}\"\n[[file]]\npath = \"/a\"\ncontent = \"\"\n"
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.arch, Arch::Arm64);
    assert_eq!(p.formats, vec![Format::Tar]);
    assert_eq!(
        (p.files[0].mode, p.files[0].uid, p.files[0].gid),
        (0o644, 0, 0)
    );
}

#[test]
fn unknown_key_is_named_at_its_position() {
    let text = good().replace("[image]\n", "[image]\ncolour = \"red\"\n");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col), (19, 1));
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    assert_eq!(key, "image.colour");
}

#[test]
fn unknown_top_level_key() {
    let text = good().replace(
        "arch = \"amd64\"\n",
        "arch = \"amd64\"\nkubernetes-version = 1\n",
    );
    let (line, col, _key, msg) = fail(&text);
    assert_eq!((line, col), (5, 1));
    assert!(msg.contains("unknown field `kubernetes-version`"), "{msg}");
}

#[test]
fn wrong_type_names_key_and_value_position() {
    let text = good().replace("schema = 1", "schema = \"1\"");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (1, 10, "schema"));
    assert!(
        msg.contains("invalid type: string \"1\", expected i64"),
        "{msg}"
    );

    let text = good().replace("mode = \"0640\"", "mode = 0640");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (15, 8, "file[0].mode"));
    assert!(!msg.is_empty());

    let text = good().replace("mode = \"0640\"", "mode = 640");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (15, 8, "file[0].mode"));
    assert!(
        msg.contains("invalid type: integer `640`, expected a string"),
        "{msg}"
    );
}

#[test]
fn syntax_error_position() {
    let text = good().replace("version = \"1.0.0\"", "version = \"1.0.0");
    let (line, col, key, msg) = fail(&text);
    assert_eq!(line, 3);
    assert!(col > 10, "{col}");
    assert_eq!(key, "version");
    assert!(!msg.is_empty());
}

#[test]
fn missing_key() {
    let text = good().replace("version = \"1.0.0\"\n", "");
    let (line, _, _, msg) = fail(&text);
    assert_eq!(line, 1);
    assert!(msg.contains("missing field `version`"), "{msg}");
}

#[test]
fn tag_alone_says_pin_it() {
    let text = good().replace(&format!("cairn/extra@{D}"), "cairn/extra:1.0");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (10, 8, "layer[0].rock"));
    assert!(msg.contains("pin it: cairn pin"), "{msg}");
}

#[test]
fn malformed_digest() {
    let text = good().replace(&format!("bookworm@{D}"), "bookworm@sha256:1234");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (7, 8, "base.rock"));
    assert!(msg.starts_with("malformed digest `sha256:1234`"), "{msg}");
}

#[test]
fn relative_file_path() {
    let text = good().replace("path = \"/etc/motd\"", "path = \"etc/motd\"");
    let (line, col, key, msg) = fail(&text);
    assert_eq!((line, col, key.as_str()), (13, 8, "file[0].path"));
    assert_eq!(msg, "`etc/motd`: not an absolute path");

    let text = good().replace("path = \"/etc/motd\"", "path = \"/etc/../motd\"");
    let (_, _, _, msg) = fail(&text);
    assert!(msg.contains("not a normal path"), "{msg}");
}

#[test]
fn reserved_paths_are_refused() {
    let text = good().replace(
        "path = \"/etc/motd\"",
        "path = \"/usr/lib/cairn/profile.toml\"",
    );
    let (line, _, _, msg) = fail(&text);
    assert_eq!(line, 13);
    assert!(msg.contains("written by cairn itself"), "{msg}");
}

#[test]
fn bad_mode_and_owner() {
    let (line, col, key, msg) = fail(&good().replace("\"0640\"", "\"0998\""));
    assert_eq!((line, col, key.as_str()), (15, 8, "file[0].mode"));
    assert!(msg.contains("not a file mode"), "{msg}");
    let (line, col, key, msg) = fail(&good().replace("\"0:4\"", "\"root:root\""));
    assert_eq!((line, col, key.as_str()), (16, 9, "file[0].owner"));
    assert!(msg.contains("numeric \"UID:GID\""), "{msg}");
}

#[test]
fn content_or_source() {
    let text = good().replace("content = \"hi\\n\"\n", "");
    let (line, _, key, msg) = fail(&text);
    assert_eq!((line, key.as_str()), (13, "file[0].path"));
    assert_eq!(msg, "the file needs content or source");
}

#[test]
fn duplicate_file_paths() {
    let text = format!(
        "{}\n[[file]]\npath = \"/etc/motd\"\ncontent = \"x\"\n",
        good()
    );
    let (_, _, key, msg) = fail(&text);
    assert_eq!(key, "file[1].path");
    assert!(msg.contains("written twice"), "{msg}");
}

#[test]
fn unknown_arch_and_format_and_name() {
    let (line, col, key, msg) = fail(&good().replace("\"amd64\"", "\"riscv64\""));
    assert_eq!((line, col, key.as_str()), (4, 8, "arch"));
    assert_eq!(msg, "unknown arch `riscv64`: expected amd64 or arm64");
    let (line, col, key, msg) = fail(&good().replace("[\"tar\"]", "[\"tar\", \"vhd\"]"));
    assert_eq!((line, col, key.as_str()), (19, 19, "image.formats[1]"));
    assert!(msg.starts_with("unknown format `vhd`"), "{msg}");
    let (line, col, key, msg) = fail(&good().replace("\"edge-worker\"", "\"Edge_Worker\""));
    assert_eq!((line, col, key.as_str()), (2, 8, "name"));
    assert!(msg.contains("not a valid name"), "{msg}");
    let (line, _, key, msg) = fail(&good().replace("schema = 1", "schema = 2"));
    assert_eq!((line, key.as_str()), (1, "schema"));
    assert!(msg.contains("unsupported schema 2"), "{msg}");
}

#[test]
fn sources_stay_in_the_profile_folder() {
    let root = std::env::temp_dir().join(format!("cairn-profile-test-{}", std::process::id()));
    let dir = root.join("profile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(root.join("secret"), "outside").unwrap();
    std::fs::write(dir.join("motd"), "inside").unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("sneaky")).unwrap();
    let file = dir.join("p.toml");
    let with_source = |s: &str| good().replace("content = \"hi\\n\"", &format!("source = \"{s}\""));

    let p = Profile::parse(&file, with_source("motd")).unwrap();
    assert_eq!(
        p.files[0].content,
        FileContent::Source(dir.join("motd").canonicalize().unwrap())
    );

    for (source, expect) in [
        ("../secret", "is outside the profile's folder"),
        ("/etc/passwd", "is outside the profile's folder"),
        ("sneaky", "is outside the profile's folder (it resolves to"),
        ("missing", "not found beside the profile"),
    ] {
        match Profile::parse(&file, with_source(source)) {
            Err(Error::Invalid(d)) => {
                assert_eq!(
                    (d.line, d.column, d.key.as_str()),
                    (14, 10, "file[0].source"),
                    "{source}"
                );
                assert!(d.message.contains(expect), "{source}: {}", d.message);
            }
            other => panic!("{source}: {other:?}"),
        }
    }
    // In an image, the baked profile's sources are not beside it: only their form is checked.
    let baked = root.join("baked.toml");
    std::fs::write(&baked, with_source("gone-at-boot")).unwrap();
    assert!(Profile::load(&baked).is_err());
    let p = Profile::load_baked(&baked).unwrap();
    assert_eq!(
        p.files[0].content,
        FileContent::Source(root.join("gone-at-boot"))
    );
    std::fs::write(&baked, with_source("../escape")).unwrap();
    assert!(Profile::load_baked(&baked).is_err());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn display_has_file_line_column_key() {
    let e = parse(&good().replace("\"amd64\"", "\"x\"")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.toml:4:8: `arch`: unknown arch `x`: expected amd64 or arm64"
    );
}

fn with_system(extra: &str) -> String {
    format!("{}{extra}", good())
}

#[test]
fn system_and_users() {
    let p = parse(&with_system(
        "\n[system]\nhostname = \"edge-{machine-id:8}\"\ntimezone = \"Europe/Paris\"\nkernel-cmdline = [\"console=ttyS0\"]\nsysctl = { \"net.ipv4.ip_forward\" = \"1\" }\nmodules = [\"overlay\", \"br_netfilter\"]\nservices = { enable = [\"containerd\"], disable = [\"ssh.socket\"] }\n[[user]]\nname = \"ops\"\ngroups = [\"sudo\"]\nssh-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example\"]\n",
    ))
    .unwrap();
    assert_eq!(p.system.hostname.as_deref(), Some("edge-{machine-id:8}"));
    assert_eq!(p.system.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(p.system.sysctl["net.ipv4.ip_forward"], "1");
    assert_eq!(p.system.modules, ["overlay", "br_netfilter"]);
    assert_eq!(p.system.services.enable, ["containerd"]);
    assert_eq!(p.users[0].groups, ["sudo"]);
}

#[test]
fn system_errors_have_positions() {
    for (extra, line, col, key, msg) in [
        (
            "\n[system]\nhostname = \"edge-{serial}\"\n",
            22,
            12,
            "system.hostname",
            "unknown placeholder {serial}",
        ),
        (
            "\n[system]\ntimezone = \"../etc/passwd\"\n",
            22,
            12,
            "system.timezone",
            "is not a time zone name",
        ),
        (
            "\n[system]\nmodules = [\"ok\", \"bad mod\"]\n",
            22,
            18,
            "system.modules[1]",
            "is not a kernel module name",
        ),
        (
            "\n[system]\nkernel-cmdline = [\"cairn.verity=x\"]\n",
            22,
            19,
            "system.kernel-cmdline[0]",
            "is set by cairn itself",
        ),
        (
            "\n[system]\nservices = { enable = [\"a\"], disable = [\"a.service\"] }\n",
            22,
            41,
            "system.services.disable[0]",
            "named twice",
        ),
        (
            "\n[system]\nswap = true\n",
            22,
            1,
            "system.swap",
            "unknown field `swap`",
        ),
        (
            "\n[[user]]\nname = \"Ops\"\n",
            22,
            8,
            "user[0].name",
            "is not a user name",
        ),
        (
            "\n[[user]]\nname = \"ops\"\nssh-keys = [\"ssh-dss AAAA\"]\n",
            23,
            13,
            "user[0].ssh-keys[0]",
            "not an SSH public key type",
        ),
        (
            "\n[[user]]\nname = \"ops\"\n[[user]]\nname = \"ops\"\n",
            24,
            8,
            "user[1].name",
            "defined twice",
        ),
    ] {
        let (l, c, k, m) = fail(&with_system(extra));
        assert_eq!((l, c, k.as_str()), (line, col, key), "{extra}: {m}");
        assert!(m.contains(msg), "{extra}: {m}");
    }
}

#[test]
fn instance_data_merges_and_is_restricted() {
    use crate::Instance;
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps";
    let p = parse(&with_system(&format!(
        "\n[system]\nhostname = \"p\"\n[[user]]\nname = \"ops\"\nssh-keys = [\"{key} old\"]\n[[user]]\nname = \"keep\"\n"
    )))
    .unwrap();
    let i = Instance::parse(
        "fw_cfg opt/cairn/instance.toml",
        &format!("[system]\nhostname = \"node-7\"\n[[user]]\nname = \"ops\"\nssh-keys = [\"{key} new\"]\n[[user]]\nname = \"extra\"\n[[file]]\npath = \"/etc/cairn-role\"\ncontent = \"worker\"\n"),
    )
    .unwrap();
    let m = p.merge(Some(&i));
    assert_eq!(m.hostname.as_deref(), Some("node-7"));
    let names: Vec<&str> = m.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["ops", "keep", "extra"]);
    assert_eq!(m.users[0].ssh_keys, [format!("{key} new")]);
    assert_eq!(m.files[0].path, "/etc/cairn-role");
    assert_eq!(p.merge(None).hostname.as_deref(), Some("p"));

    for (text, line, col, key, msg) in [
        (
            "[[file]]\npath = \"/usr/bin/x\"\ncontent = \"\"\n",
            2,
            8,
            "file[0].path",
            "on the read-only part of the node",
        ),
        (
            "[[file]]\npath = \"/etc/x\"\nsource = \"x\"\n",
            3,
            10,
            "file[0].source",
            "give content",
        ),
        (
            "[system]\ntimezone = \"UTC\"\n",
            2,
            1,
            "system.timezone",
            "unknown field `timezone`",
        ),
        ("schema = 2\n", 1, 10, "schema", "unsupported schema 2"),
        ("[system\n", 1, 8, "", ""),
    ] {
        match Instance::parse("esp cairn/instance.toml", text) {
            Err(Error::Invalid(d)) => {
                assert_eq!(
                    (d.line, d.column, d.key.as_str()),
                    (line, col, key),
                    "{text}: {}",
                    d.message
                );
                assert!(d.message.contains(msg), "{text}: {}", d.message);
                assert!(
                    d.to_string()
                        .starts_with(&format!("esp cairn/instance.toml:{line}:{col}:")),
                    "{d}"
                );
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn snaps_are_pinned_files_beside_the_profile_with_their_assertions() {
    let root = tempfile_dir("snaps");
    std::fs::write(root.join("k8s.snap"), "squashfs").unwrap();
    std::fs::write(root.join("k8s.assert"), "type: x\n").unwrap();
    let file = root.join("p.toml");
    let pin = "A".repeat(64);
    let with = |table: &str| format!("{}\n{table}", good());
    let p = Profile::parse(
        &file,
        with(&format!(
            "[[snap]]\nfile = \"k8s.snap\"\nassert = \"k8s.assert\"\nsha3-384 = \"{pin}\"\n"
        )),
    )
    .unwrap();
    assert_eq!(p.snaps.len(), 1);
    assert_eq!(p.snaps[0].key, "snap[0]");
    assert_eq!(
        p.snaps[0].file,
        root.join("k8s.snap").canonicalize().unwrap()
    );
    assert!(!p.snaps[0].unasserted);
    let p = Profile::parse(
        &file,
        with(&format!(
            "[[snap]]\nfile = \"k8s.snap\"\nsha3-384 = \"{pin}\"\nunasserted = true\n"
        )),
    )
    .unwrap();
    assert!(p.snaps[0].unasserted && p.snaps[0].assert.is_none());

    // The good profile has 19 lines and a blank one is added: [[snap]] is line 21, its first key line 22.
    for (table, line, key, expect) in [
        (
            format!("[[snap]]\nfile = \"k8s.snap\"\nsha3-384 = \"{pin}\"\n"),
            22,
            "snap[0].assert",
            "needs its .assert",
        ),
        (
            "[[snap]]\nfile = \"k8s.snap\"\nassert = \"k8s.assert\"\nsha3-384 = \"sha256:00\"\n"
                .into(),
            24,
            "snap[0].sha3-384",
            "not a snap digest",
        ),
        (
            format!(
                "[[snap]]\nfile = \"k8s.snap\"\nassert = \"k8s.assert\"\nsha3-384 = \"{pin}\"\nunasserted = true\n"
            ),
            23,
            "snap[0].assert",
            "one or the other",
        ),
        (
            format!("[[snap]]\nfile = \"gone.snap\"\nunasserted = true\nsha3-384 = \"{pin}\"\n"),
            22,
            "snap[0].file",
            "not found beside the profile",
        ),
        (
            format!(
                "[[snap]]\nfile = \"k8s.snap\"\nunasserted = true\nsha3-384 = \"{pin}\"\n\n[[snap]]\nfile = \"k8s.snap\"\nunasserted = true\nsha3-384 = \"{pin}\"\n"
            ),
            29,
            "snap[1].sha3-384",
            "named twice",
        ),
    ] {
        match Profile::parse(&file, with(&table)) {
            Err(Error::Invalid(d)) => {
                assert_eq!(
                    (d.line, d.key.as_str()),
                    (line, key),
                    "{table}: {}",
                    d.message
                );
                assert!(d.message.contains(expect), "{table}: {}", d.message);
            }
            other => panic!("{table}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-profile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn slot_size_in_bytes_or_binary_units() {
    let with = |v: &str| {
        good().replace(
            "formats = [\"tar\"]",
            &format!("formats = [\"tar\"]\nslot-size = {v}"),
        )
    };
    assert_eq!(parse(&good()).unwrap().slot_size, None);
    for (v, bytes) in [
        ("\"2G\"", 2u64 << 30),
        ("\"2GiB\"", 2 << 30),
        ("\"1536M\"", 1536 << 20),
        ("\"1536 MiB\"", 1536 << 20),
        ("134217728", 128 << 20),
    ] {
        let s = parse(&with(v)).unwrap().slot_size.unwrap();
        assert_eq!(s.bytes, bytes, "{v}");
        assert_eq!(s.label, "p.toml:20:13: image.slot-size", "{v}");
    }
    let (line, col, key, msg) = fail(&with("\"2 gigs\""));
    assert_eq!((line, col, key.as_str()), (20, 13, "image.slot-size"));
    assert!(msg.contains("binary units"), "{msg}");
    let (_, _, _, msg) = fail(&with("\"32M\""));
    assert_eq!(msg, "33554432 bytes: a slot is 64 MiB to 1024 GiB");
    let (_, _, _, msg) = fail(&with("-1"));
    assert!(msg.contains("binary units"), "{msg}");
    let (_, _, _, msg) = fail(&with("\"100000K\""));
    assert!(msg.contains("not a whole number of MiB"), "{msg}");
    let (_, _, _, msg) = fail(&with("\"99999999999T\""));
    assert!(msg.contains("binary units"), "{msg}");
}
