//! `cairn-agent` as a command: its help per command, a failure said once on stderr, `apply --dry-run` against what
//! a root holds, and the status a later failed run leaves (the good provisioning kept, ready, times, versions).

use std::collections::BTreeSet;
use std::path::Path;

use cairn_e2e::agent_root::{KEY, apply, failed_status, line_json, read, small_root};
use cairn_e2e::cairn::{output_text as text, write_file as write};
use cairn_e2e::output::snapshot;
use cairn_e2e::run_agent;
use serde_json::Value;

const ID: &str = "0123456789abcdef0123456789abcdef\n";
const ROOT_HASH: &str = "4f1a0c5e9b7d2a6c8e0f3b5d7a9c1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d";

/// A hash of every path under `root` with its content, mode, owner and mtime: equal hashes, nothing written.
fn tree_hash(root: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{:?}", snapshot(root, &[]))))
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_is_each_commands_own_usage_and_exits_0() {
    for (args, first_line, not) in [
        (
            &["--help"][..],
            "cairn-agent: the first-boot agent",
            "--instance FILE",
        ),
        (
            &["-h"][..],
            "cairn-agent: the first-boot agent",
            "--instance FILE",
        ),
        (
            &["help"][..],
            "cairn-agent: the first-boot agent",
            "--instance FILE",
        ),
        (
            &["apply", "--help"][..],
            "usage: cairn-agent apply --root DIR [OPTIONS]",
            "usage: cairn-agent status",
        ),
        (
            &["apply", "--root", "/nonexistent", "-h"][..],
            "usage: cairn-agent apply --root DIR [OPTIONS]",
            "usage: cairn-agent run",
        ),
        (
            &["help", "apply"][..],
            "usage: cairn-agent apply --root DIR [OPTIONS]",
            "usage: cairn-agent check",
        ),
        (
            &["status", "-h"][..],
            "usage: cairn-agent status [OPTIONS]",
            "--dry-run",
        ),
        (
            &["update", "--help"][..],
            "usage: cairn-agent update SOURCE [OPTIONS]",
            "--dry-run",
        ),
        (
            &["run", "--help"][..],
            "usage: cairn-agent run PHASE",
            "--root",
        ),
        (
            &["check", "--help"][..],
            "usage: cairn-agent check [PROFILE]",
            "--root",
        ),
    ] {
        let o = run_agent(args, &[]);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        let out = stdout(&o);
        assert!(out.starts_with(first_line), "{args:?}: {out}");
        assert!(!out.contains(not), "{args:?}: {out}");
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o));
    }
    let o = run_agent(["apply", "--help"], &[]);
    for option in [
        "--dry-run",
        "--instance FILE",
        "--kubernetes",
        "--cmdline TEXT",
    ] {
        assert!(stdout(&o).contains(option), "{option}: {}", stdout(&o));
    }
    let o = run_agent(["status", "--help"], &[]);
    for field in [
        "`ready`",
        "`last_run`",
        "`last_good`",
        "`image`",
        "`slots`",
        "`last_rollback`",
    ] {
        assert!(stdout(&o).contains(field), "{field}: {}", stdout(&o));
    }
    let o = run_agent(["update", "--help"], &[]);
    for option in [
        "oci-layout:DIR@sha256:DIGEST",
        "--reboot",
        "--allow-rolled-back",
    ] {
        assert!(stdout(&o).contains(option), "{option}: {}", stdout(&o));
    }

    for args in [&["--version"][..], &["-V"]] {
        let o = run_agent(args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(stdout(&o).starts_with("cairn-agent "), "{}", text(&o));
    }

    // Usage errors: exit 2, the problem and where the help is on stderr, nothing on stdout.
    for (args, said) in [
        (
            &["frobnicate"][..],
            "cairn-agent: unknown command `frobnicate`",
        ),
        (
            &["frobnicate", "--help"][..],
            "cairn-agent: unknown command `frobnicate`",
        ),
        (&[][..], "cairn-agent: no command"),
        (
            &["apply", "--bogus"][..],
            "cairn-agent: unknown option `--bogus`\nusage: cairn-agent apply --root DIR [OPTIONS]\n(`cairn-agent apply --help` for more)\n",
        ),
        (&["apply"][..], "cairn-agent: apply needs --root DIR\n"),
        (
            &["status", "--bogus"][..],
            "(`cairn-agent status --help` for more)",
        ),
        (&["run", "everything"][..], "run takes one phase"),
        (&["update"][..], "cairn-agent: update needs a SOURCE\n"),
        (
            &["update", "a@sha256:x", "b"][..],
            "update takes one SOURCE",
        ),
        (
            &["help", "nothing"][..],
            "cairn-agent: no command `nothing`",
        ),
    ] {
        let o = run_agent(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o));
    }
}

#[test]
fn a_failing_apply_says_so_once_as_text_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    let instance = dir.path().join("instance.toml");
    std::fs::write(
        &instance,
        "[[user]]\nname = \"ops\"\ngroups = [\"wheel\"]\n",
    )
    .expect("write");
    let o = apply(
        &root,
        &["--instance", instance.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "cairn-agent: system phase failed: users: user ops: group \"wheel\" does not exist in /etc/group\n"
    );
    assert_eq!(stdout(&o), "", "nothing on stdout for a failure");
    // The status file keeps the JSON: the failed step, and the error as the run's.
    let status = failed_status(&root, &o);
    let users = status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "users")
        .expect("users step");
    assert_eq!(users["outcome"], "failed", "{status}");
    assert!(status.get("last_good").is_none(), "{status}");

    // Bad input likewise: one line, exit 2.
    std::fs::write(&instance, "[system]\nhostname = node\n").expect("write");
    let o = apply(
        &root,
        &["--instance", instance.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "cairn-agent: system phase failed: {}:2:12: ",
            instance.display()
        )),
        "{err}"
    );
    assert_eq!(stdout(&o), "");
    failed_status(&root, &o);
}

/// Paths whose file content, link, mode or owner differ between two snapshots, or that only one has (folders
/// only when new: their mtimes change with their entries), as the node sees them (`/home` is `/var/home`).
fn changed_paths(
    before: &std::collections::BTreeMap<String, (Vec<u8>, u32, u32, u32, i64)>,
    after: &std::collections::BTreeMap<String, (Vec<u8>, u32, u32, u32, i64)>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, now) in after {
        let changed = match before.get(path) {
            None => true,
            Some(was) => (&was.0, was.1, was.2, was.3) != (&now.0, now.1, now.2, now.3),
        };
        if changed {
            out.insert(format!("/{}", path.replace("var/home", "home")));
        }
    }
    out
}

#[test]
fn dry_run_shows_each_change_against_the_root_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    write(&root, "/etc/hostname", "localhost\n", 0o644);
    let instance = dir.path().join("instance.toml");
    std::fs::write(
        &instance,
        "[system]\nhostname = \"node-1\"\n[[file]]\npath = \"/etc/cairn-role\"\ncontent = \"worker\\n\"\nmode = \"0600\"\n",
    )
    .expect("write");
    let args = ["--instance", instance.to_str().expect("utf-8")];
    let dry_args = [args[0], args[1], "--dry-run"];

    // A fresh root: every change, concretely; not one byte, mode or mtime written.
    let before = snapshot(&root, &[]);
    let dry = apply(&root, &dry_args, &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(dry.stderr.is_empty(), "{}", text(&dry));
    assert!(snapshot(&root, &[]) == before, "the dry run wrote");
    let said = stdout(&dry);
    for line in [
        "system phase, instance: file\n",
        "  machine-id nothing would change\n",
        "  hostname   write /etc/hostname: node-1 (now: localhost)\n",
        "             /etc/hosts: add \"127.0.1.1\\tnode-1\"\n",
        "  users      /etc/passwd: add \"ops:x:1000:1000::/home/ops:/bin/bash\"\n",
        "             /etc/group: \"sudo:x:27:\" becomes \"sudo:x:27:ops\"\n",
        "             /etc/shadow: add \"ops:!:::::::\"\n",
        "             /etc/gshadow: add \"ops:!::\"\n",
        "             make folder /home/ops, mode 0700, owner 1000:1000\n",
        "             make folder /home/ops/.ssh, mode 0700, owner 1000:1000\n",
        "             write /home/ops/.ssh/authorized_keys, mode 0600, owner 1000:1000 (now: absent)\n",
        &format!("             /home/ops/.ssh/authorized_keys: add {KEY:?}\n"),
        "  files      write /etc/cairn-role: 7 bytes, mode 0600, owner 0:0 (now: absent)\n",
    ] {
        assert!(said.contains(line), "{line:?} missing from:\n{said}");
    }
    assert!(
        !said.contains("worker"),
        "an instance file's content was shown:\n{said}"
    );
    assert!(
        said.ends_with("\ndry run: 10 changes would be made; nothing was written\n"),
        "{said}"
    );

    // What the real run then changes is what the dry run said, path for path.
    let o = apply(&root, &args, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let after = snapshot(&root, &[]);
    let changed: BTreeSet<String> = changed_paths(&before, &after)
        .into_iter()
        .filter(|p| !p.starts_with("/var/lib") && !p.starts_with("/run"))
        .collect();
    let mentioned: BTreeSet<String> = changed
        .iter()
        .filter(|p| said.contains(&format!(" {p}")))
        .cloned()
        .collect();
    assert_eq!(mentioned, changed, "the dry run said:\n{said}");
    assert_eq!(read(&root, "/etc/hostname"), "node-1\n");

    // Provisioned: the journal says the phase is done, nothing would change.
    let provisioned = tree_hash(&root);
    let dry = apply(&root, &dry_args, &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert_eq!(
        stdout(&dry),
        "system phase: done on an earlier boot; nothing would change\ndry run: nothing would change\n"
    );
    assert_eq!(tree_hash(&root), provisioned);

    // Without the journal, each step compares the root itself: a second run would change nothing.
    let state = root.join("var/lib/cairn/state.json");
    let journal = std::fs::read(&state).expect("state");
    std::fs::remove_file(&state).expect("rm");
    let bare = tree_hash(&root);
    let dry = apply(&root, &dry_args, &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let said = stdout(&dry);
    for step in ["machine-id", "hostname", "users", "files"] {
        assert!(
            said.contains(&format!("  {step:<10} nothing would change\n")),
            "{step}:\n{said}"
        );
    }
    assert!(said.ends_with("dry run: nothing would change\n"), "{said}");
    assert_eq!(tree_hash(&root), bare);
    std::fs::write(&state, journal).expect("restore");
    let provisioned = tree_hash(&root);

    // Other instance data than the first boot's: reported, never applied.
    std::fs::write(&instance, "[system]\nhostname = \"renamed\"\n").expect("write");
    let dry = apply(&root, &dry_args, &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        stdout(&dry)
            .starts_with("system phase: instance changed since first boot; would not apply\n"),
        "{}",
        text(&dry)
    );
    assert!(!stdout(&dry).contains("renamed"), "{}", text(&dry));
    assert_eq!(tree_hash(&root), provisioned);
}

#[test]
fn dry_run_of_a_root_without_a_machine_id_says_one_would_be_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), "");
    let before = tree_hash(&root);
    let dry = apply(&root, &["--dry-run"], &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let said = stdout(&dry);
    for line in [
        "  machine-id write /etc/machine-id: a new random id (now: empty)\n",
        "  hostname   write /etc/hostname: edge-xxxxxxxx (now: absent)\n",
        "             (the x's in edge-xxxxxxxx stand for the new machine id's digits)\n",
    ] {
        assert!(said.contains(line), "{line:?} missing from:\n{said}");
    }
    assert_eq!(tree_hash(&root), before);

    // A step that would fail says so, the rest would not run, and the exit code is the run's.
    let broken = tempfile::tempdir().expect("tempdir");
    let root = small_root(broken.path(), ID);
    write(&root, "/etc/group", "root:x:0:\n", 0o644);
    let before = tree_hash(&root);
    let dry = apply(&root, &["--dry-run"], &[]);
    assert_eq!(dry.status.code(), Some(1), "{}", text(&dry));
    assert!(
        stdout(&dry).contains(
            "  users      would fail: user ops: group \"sudo\" does not exist in /etc/group\n"
        ),
        "{}",
        text(&dry)
    );
    assert_eq!(
        String::from_utf8_lossy(&dry.stderr),
        "cairn-agent: dry run: system phase would fail: users: user ops: group \"sudo\" does not exist in /etc/group\n"
    );
    assert_eq!(tree_hash(&root), before);
}

/// RFC 3339 in UTC as the agent writes it, `YYYY-MM-DDThh:mm:ssZ`, between `from` and `to` (same format).
fn assert_time(value: &Value, from: &str, to: &str) {
    let t = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    let shape = t.len() == 20
        && t.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "{t}");
    assert!(from <= t && t <= to, "{from} <= {t} <= {to}");
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    cairn_profile::time::rfc3339(secs)
}

fn status(root: &Path) -> Value {
    let o = run_agent(["status", "--root", &root.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

#[test]
fn status_keeps_the_good_provisioning_through_a_later_failed_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    let o = run_agent(["status", "--root", &root.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(1), "no status yet: {}", text(&o));

    let version = stdout(&run_agent(["--version"], &[]))
        .trim()
        .strip_prefix("cairn-agent ")
        .expect("version")
        .to_string();
    let cmdline = format!("console=ttyS0 cairn.verity={ROOT_HASH} quiet");
    let start = now();
    let o = apply(&root, &["--cmdline", &cmdline], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let end = now();
    let good = status(&root);
    // What the boot tests and the console read stays as it was.
    assert_eq!(good, line_json(&o, "ready"));
    assert_eq!(good["phase"], "system");
    assert_eq!(good["instance"], "none");
    assert!(
        good["steps"].as_array().is_some_and(|s| s.len() == 3),
        "{good}"
    );
    // And beside it: ready, versions, times, the good provisioning.
    assert_eq!(good["ready"], true, "{good}");
    assert_eq!(good["agent_version"], version.as_str(), "{good}");
    assert_eq!(
        good["image"],
        serde_json::json!({"profile": "edge", "version": "1.0.0", "root_hash": ROOT_HASH}),
        "{good}"
    );
    assert_eq!(good["last_run"]["phase"], "system");
    assert_eq!(good["last_run"]["outcome"], "ready");
    assert!(good["last_run"].get("error").is_none(), "{good}");
    assert_time(&good["last_run"]["started"], &start, &end);
    assert_time(&good["last_run"]["finished"], &start, &end);
    let last_good = good["last_good"].clone();
    assert_eq!(last_good["phase"], "system");
    assert_eq!(last_good["steps"], good["steps"]);
    assert_eq!(last_good["image"], good["image"]);
    assert_eq!(last_good["agent_version"], version.as_str());
    assert_eq!(last_good["finished"], good["last_run"]["finished"]);
    assert_eq!(good["provisioned"], last_good["finished"]);

    // A later run fails (its instance data is broken): the node is not ready, and the run says why, but the
    // record of the good provisioning is kept as it was.
    let instance = dir.path().join("instance.toml");
    std::fs::write(&instance, "[system\n").expect("write");
    let later = now();
    let o = apply(
        &root,
        &[
            "--cmdline",
            &cmdline,
            "--instance",
            instance.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert_eq!(failed, status(&root));
    assert_eq!(failed["ready"], false);
    assert_eq!(failed["last_run"]["phase"], "system");
    assert!(
        failed["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{}:1:", instance.display()))),
        "{failed}"
    );
    assert_time(&failed["last_run"]["started"], &later, &now());
    assert_eq!(
        failed["last_good"], last_good,
        "the good provisioning was lost"
    );
    assert_eq!(failed["provisioned"], good["provisioned"]);
    assert_eq!(failed["image"], good["image"]);

    // The next good run makes it ready again; the node was provisioned when it first was.
    let o = apply(&root, &["--cmdline", &cmdline], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let again = status(&root);
    assert_eq!(again["ready"], true, "{again}");
    assert_eq!(again["last_run"]["outcome"], "ready");
    assert_eq!(again["provisioned"], good["provisioned"]);
    assert!(
        again["last_good"]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["outcome"] == "skipped" || s["name"] == "machine-id"),
        "{again}"
    );
}
