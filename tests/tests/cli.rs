//! The conveniences around the commands: `cairn init`, shell completions and the manual page.

use std::path::Path;
use std::process::{Command, Output};

use cairn_e2e::cairn::{assert_ok, cairn_bin, stderr};

fn cairn_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(cairn_bin())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run cairn")
}

#[test]
fn init_writes_a_profile_that_validates_and_never_replaces_one_unasked() {
    for (args, role) in [
        (&[][..], None),
        (
            &["--kubernetes", "control-plane"][..],
            Some("control-plane"),
        ),
        (
            &["--kubernetes", "worker", "--name", "edge-worker"][..],
            Some("worker"),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut init = vec!["init"];
        init.extend_from_slice(args);
        let o = cairn_in(dir.path(), &init);
        assert_ok(&o, "cairn init");
        let path = dir.path().join("cairn.toml");
        let text = std::fs::read_to_string(&path).expect("cairn.toml");
        assert!(text.starts_with("# A cairn profile"), "{text}");
        let v = cairn_in(dir.path(), &["validate", "cairn.toml"]);
        assert_ok(&v, "validate the new profile");
        let said = String::from_utf8_lossy(&v.stdout).into_owned();
        match role {
            None => assert!(said.contains("valid (node 0.1.0, 1 rock)"), "{said}"),
            Some(r) => assert!(
                said.contains(&format!("kubernetes {r} hardened cis")),
                "{said}"
            ),
        }
        if args.contains(&"edge-worker") {
            assert!(said.contains("valid (edge-worker 0.1.0"), "{said}");
        }
        // Its placeholder digest is pointed out, and the build would refuse it.
        assert!(stderr(&v).contains("placeholder digest"), "{}", stderr(&v));

        std::fs::write(&path, "# mine\n").expect("write");
        let again = cairn_in(dir.path(), &init);
        assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
        assert!(
            stderr(&again).contains("already exists: pass --force"),
            "{}",
            stderr(&again)
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");
        let mut forced = init.clone();
        forced.push("--force");
        assert_ok(&cairn_in(dir.path(), &forced), "init --force");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "a temp file was left beside cairn.toml");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = cairn_in(dir.path(), &["init", "--name", "Not_A_Name"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(!dir.path().join("cairn.toml").exists());
}

#[test]
fn bash_completion_loads_and_completes_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("cairn.bash");
    let o = cairn_in(dir.path(), &["completions", "bash"]);
    assert_ok(&o, "completions");
    std::fs::write(&script, &o.stdout).expect("write");
    // Load it into a real bash and ask it to complete `cairn b`.
    let probe = format!(
        "source {}; COMP_WORDS=(cairn b); COMP_CWORD=1; COMP_LINE='cairn b'; COMP_POINT=7; _cairn cairn b cairn; printf '%s\\n' \"${{COMPREPLY[@]}}\"; complete -p cairn",
        script.display()
    );
    let out = Command::new("bash")
        .args(["-c", &probe])
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l == "build"), "{text}");
    assert!(text.contains("-F _cairn cairn"), "{text}");
}

#[test]
fn the_manual_page_is_roff_naming_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = cairn_in(dir.path(), &["man"]);
    assert_ok(&o, "man");
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH cairn 1"), "{page}");
    for command in ["validate", "pin", "build", "cache", "init", "completions"] {
        assert!(
            page.contains(&format!("\ncairn\\-{command}(1)\n")),
            "{command}: {page}"
        );
    }
}
