//! `cairn-agent apply --root` on small hand-made roots: every key the agent applies, idempotence, crashes, and each instance
//! source with its bad-input case. A loopback HTTP server plays the metadata service; nothing is ever sent to
//! 169.254.169.254.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use cairn_e2e::agent_root::{
    ID, KEY2, STATUS_FILES, apply, failed_status, line_json, read, small_root,
};
use cairn_e2e::cairn::output_text as text;
use cairn_e2e::output::snapshot;

#[test]
fn applies_every_key_once_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), "");
    let instance = dir.path().join("instance.toml");
    std::fs::write(
        &instance,
        format!("[system]\nhostname = \"node-{{machine-id:4}}\"\n[[user]]\nname = \"ops\"\ngroups = [\"sudo\"]\nssh-keys = [\"{KEY2}\"]\n[[file]]\npath = \"/etc/cairn-role\"\ncontent = \"worker\\n\"\nmode = \"0600\"\n"),
    )
    .expect("write");
    let o = apply(
        &root,
        &["--instance", instance.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // machine-id made (a root folder), hostname from the instance's template.
    let id = read(&root, "/etc/machine-id");
    assert_eq!(id.trim().len(), 32, "{id:?}");
    let hostname = format!("node-{}", &id[..4]);
    assert_eq!(read(&root, "/etc/hostname"), format!("{hostname}\n"));
    assert!(read(&root, "/etc/hosts").contains(&format!("127.0.1.1\t{hostname}\n")));
    // The time zone, sysctls, modules, units and network are the same on every machine: the builder bakes them
    // into the image (tests/tests/build.rs), the agent leaves them alone.
    for p in [
        "etc/localtime",
        "etc/timezone",
        "etc/sysctl.d/90-cairn.conf",
        "etc/modules-load.d/cairn.conf",
        "etc/systemd/network/80-cairn-dhcp.network",
        "etc/systemd/system",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(p)).is_err(),
            "the agent wrote {p}"
        );
    }

    // The instance's user replaces the profile's: its key only, in the image's /var/home.
    assert!(read(&root, "/etc/passwd").contains("ops:x:1000:1000::/home/ops:/bin/bash\n"));
    assert!(read(&root, "/etc/group").contains("sudo:x:27:ops\n"));
    assert!(read(&root, "/etc/shadow").contains("ops:!:"));
    let keys = root.join("var/home/ops/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).expect("keys"),
        format!("{KEY2}\n")
    );
    let m = std::fs::metadata(&keys).expect("stat");
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o600, 1000, 1000));

    // The instance's file.
    assert_eq!(read(&root, "/etc/cairn-role"), "worker\n");
    assert_eq!(
        std::fs::metadata(root.join("etc/cairn-role"))
            .expect("stat")
            .mode()
            & 0o777,
        0o600
    );
    // Console lines and status.
    let system = line_json(&o, "system ready");
    assert_eq!(system["instance"], "file");
    let node = line_json(&o, "ready");
    let names: Vec<&str> = node["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["machine-id", "hostname", "users", "files"]);
    assert!(
        node["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["outcome"] == "applied"),
        "{node}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/cairn/status.json")).expect("json");
    assert_eq!(status, node);
    let state_mode = std::fs::metadata(root.join("var/lib/cairn/state.json"))
        .expect("state")
        .mode()
        & 0o777;
    assert_eq!(state_mode, 0o600);

    // Twice in a row: not one byte, mode or mtime changes, and the steps say so.
    let before = snapshot(&root, STATUS_FILES);
    let again = apply(
        &root,
        &["--instance", instance.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(
        snapshot(&root, STATUS_FILES),
        before,
        "the second run changed the root"
    );
    let node = line_json(&again, "ready");
    assert!(
        node["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["outcome"] == "skipped"),
        "{node}"
    );
    assert!(node.get("note").is_none());

    // Instance data that changed later is reported, not applied.
    std::fs::write(&instance, "[system]\nhostname = \"renamed\"\n").expect("write");
    let changed = apply(
        &root,
        &["--instance", instance.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(changed.status.code(), Some(0));
    assert_eq!(
        line_json(&changed, "ready")["note"],
        "instance changed since first boot, not applied"
    );
    assert_eq!(snapshot(&root, STATUS_FILES), before);

    // --dry-run shows the changes against what is there and writes nothing (tests/agent_cli.rs has the rest).
    let fresh = tempfile::tempdir().expect("tempdir");
    let root2 = small_root(fresh.path(), ID);
    let before2 = snapshot(&root2, &[]);
    let dry = apply(&root2, &["--dry-run"], &[]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout)
            .contains("  hostname   write /etc/hostname: edge-01234567 (now: absent)\n"),
        "{}",
        text(&dry)
    );
    assert_eq!(snapshot(&root2, &[]), before2);
}

#[test]
fn a_crash_between_steps_completes_on_the_next_run() {
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let clean = small_root(clean_dir.path(), ID);
    let o = apply(&clean, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for crash_after in ["machine-id", "hostname", "users"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = small_root(dir.path(), ID);
        let crashed = apply(&root, &[], &[("CAIRN_AGENT_CRASH_AFTER", crash_after)]);
        assert_eq!(
            crashed.status.code(),
            None,
            "{crash_after}: the agent should have died: {}",
            text(&crashed)
        );
        let o = apply(&root, &[], &[]);
        assert_eq!(o.status.code(), Some(0), "{crash_after}: {}", text(&o));
        let mut a = snapshot(&clean, STATUS_FILES);
        let mut b = snapshot(&root, STATUS_FILES);
        // Compare contents, modes and owners: mtimes differ between two separate roots.
        for v in a.values_mut().chain(b.values_mut()) {
            v.4 = 0;
        }
        assert_eq!(
            a, b,
            "{crash_after}: a crash and a rerun differ from one clean run"
        );
        // Journaled steps are skipped (the machine id is always read again), the rest applied.
        let node = line_json(&o, "ready");
        let mut journaled = true;
        for step in node["steps"].as_array().expect("steps") {
            let name = step["name"].as_str().unwrap_or("");
            let expect = match (name, journaled) {
                ("machine-id", _) => "unchanged",
                (_, true) => "skipped",
                (_, false) => "applied",
            };
            assert_eq!(step["outcome"], expect, "{crash_after}: {node}");
            if name == crash_after {
                journaled = false;
            }
        }
    }
}

#[test]
fn local_sources_in_order_and_their_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    let fw = dir.path().join("fw_cfg");
    let fw_file = fw.join("by_name/opt/cairn/instance.toml/raw");
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(fw_file.parent().expect("parent")).expect("mkdir");
    std::fs::create_dir_all(esp.join("cairn")).expect("mkdir");
    std::fs::write(&fw_file, "[system]\nhostname = \"from-fw-cfg\"\n").expect("write");
    std::fs::write(
        esp.join("cairn/instance.toml"),
        "[system]\nhostname = \"from-esp\"\n",
    )
    .expect("write");
    let fw_s = fw.to_str().expect("utf-8");
    let esp_s = esp.to_str().expect("utf-8");

    // A broken fw_cfg file fails the run, naming it and the position, and nothing is applied.
    std::fs::write(&fw_file, "[system]\nhostname = from-fw-cfg\n").expect("write");
    let before = snapshot(&root, &[]);
    let o = apply(&root, &["--fw-cfg", fw_s, "--esp", esp_s], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    let note = failed["note"].as_str().unwrap_or("");
    assert!(note.contains("opt/cairn/instance.toml:2:12"), "{note}");
    assert_eq!(failed["instance"], "fw_cfg");
    let mut after = snapshot(&root, STATUS_FILES);
    // Only the failure's own report is written (the status, under var/lib and run).
    after.retain(|k, _| !k.starts_with("var/lib") && !k.starts_with("run"));
    let mut before_cmp = before.clone();
    before_cmp.retain(|k, _| !k.starts_with("var/lib") && !k.starts_with("run"));
    assert_eq!(after, before_cmp, "a broken source applied something");

    // fw_cfg wins over the ESP.
    std::fs::write(&fw_file, "[system]\nhostname = \"from-fw-cfg\"\n").expect("write");
    let o = apply(&root, &["--fw-cfg", fw_s, "--esp", esp_s], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(read(&root, "/etc/hostname"), "from-fw-cfg\n");
    assert_eq!(line_json(&o, "ready")["instance"], "fw_cfg");

    // The ESP when there is no fw_cfg; a file on the read-only part is refused, naming it.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let root2 = small_root(dir2.path(), ID);
    let o = apply(&root2, &["--esp", esp_s], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(read(&root2, "/etc/hostname"), "from-esp\n");
    assert_eq!(line_json(&o, "ready")["instance"], "esp");
    std::fs::write(
        esp.join("cairn/instance.toml"),
        "[[file]]\npath = \"/usr/local/bin/x\"\ncontent = \"\"\n",
    )
    .expect("write");
    let dir3 = tempfile::tempdir().expect("tempdir");
    let root3 = small_root(dir3.path(), ID);
    let o = apply(&root3, &["--esp", esp_s], &[]);
    assert_eq!(o.status.code(), Some(2));
    let note = failed_status(&root3, &o)["note"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        note.contains("`/usr/local/bin/x` is on the read-only part of the node"),
        "{note}"
    );

    // No source at all: the profile alone.
    let dir4 = tempfile::tempdir().expect("tempdir");
    let root4 = small_root(dir4.path(), ID);
    let o = apply(&root4, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(line_json(&o, "ready")["instance"], "none");
    assert_eq!(read(&root4, "/etc/hostname"), "edge-01234567\n");
}

#[test]
fn instance_data_that_is_not_text_fails_naming_the_source_and_the_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fw = dir.path().join("fw_cfg");
    let fw_file = fw.join("by_name/opt/cairn/instance.toml/raw");
    let esp = dir.path().join("esp");
    let esp_file = esp.join("cairn/instance.toml");
    std::fs::create_dir_all(fw_file.parent().expect("parent")).expect("mkdir");
    std::fs::create_dir_all(esp.join("cairn")).expect("mkdir");
    let bad = b"[system]\nhostname = \"\xC3\x28\"\n";
    let position = "not UTF-8 text (invalid byte at offset 21, line 2, column 13)";
    let failed_note = |run: &str, args: &[&str]| {
        let root = small_root(&dir.path().join(run), ID);
        let o = apply(&root, args, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        failed_status(&root, &o)["note"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    std::fs::write(&fw_file, bad).expect("write");
    let note = failed_note("fw", &["--fw-cfg", fw.to_str().expect("utf-8")]);
    assert!(
        note.contains(&format!("fw_cfg opt/cairn/instance.toml: {position}")),
        "{note}"
    );

    std::fs::write(&esp_file, bad).expect("write");
    let note = failed_note("esp", &["--esp", esp.to_str().expect("utf-8")]);
    assert!(
        note.contains(&format!("{}: {position}", esp_file.display())),
        "{note}"
    );

    let file = dir.path().join("instance.toml");
    std::fs::write(&file, bad).expect("write");
    let note = failed_note("file", &["--instance", file.to_str().expect("utf-8")]);
    assert!(
        note.contains(&format!("{}: {position}", file.display())),
        "{note}"
    );

    // A control character in an ssh key never reaches authorized_keys: refused at the value.
    std::fs::write(
        &fw_file,
        "[[user]]\nname = \"ops\"\nssh-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc x\\u001b[2J\"]\n",
    )
    .expect("write");
    let note = failed_note("key", &["--fw-cfg", fw.to_str().expect("utf-8")]);
    assert!(
        note.contains(
            "opt/cairn/instance.toml:3:13: `user[0].ssh-keys[0]`: control character U+001B"
        ),
        "{note}"
    );
}

/// A loopback HTTP server with canned answers per "METHOD PATH"; records each request line and headers.
struct Server {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(routes: Vec<(&'static str, u16, String)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                request.push_str(&line);
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let first = request.lines().next().unwrap_or("").to_string();
            log2.lock().expect("log").push(request.clone());
            let key = first
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            let (status, answer) = routes
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, "not found".into()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Server { addr, log }
}

#[test]
fn ec2_imdsv2_and_the_network_phase() {
    let token = "tok-123";
    let server = serve(vec![
        ("PUT /latest/api/token", 200, token.to_string()),
        (
            "GET /latest/user-data",
            200,
            "[system]\nhostname = \"from-imds\"\n".to_string(),
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    let endpoint = format!("http://{}", server.addr);
    let o = apply(&root, &["--imds-endpoint", &endpoint], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The system phase applies the profile; the network phase fetches and applies what the instance adds.
    assert_eq!(line_json(&o, "system ready")["instance"], "none");
    assert_eq!(line_json(&o, "network ready")["instance"], "ec2");
    let node = line_json(&o, "ready");
    assert_eq!(node["instance"], "ec2");
    assert_eq!(read(&root, "/etc/hostname"), "from-imds\n");
    let log = server.log.lock().expect("log").clone();
    assert!(log[0].starts_with("PUT /latest/api/token"), "{log:?}");
    assert!(
        log[0]
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds:"),
        "{log:?}"
    );
    assert!(log[1].starts_with("GET /latest/user-data"), "{log:?}");
    assert!(
        log[1].contains(&format!(": {token}")),
        "the token must be sent: {log:?}"
    );
}

#[test]
fn a_v1_only_metadata_service_is_refused() {
    let server = serve(vec![
        ("PUT /latest/api/token", 405, String::new()),
        (
            "GET /latest/user-data",
            200,
            "[system]\nhostname = \"v1\"\n".to_string(),
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    let o = apply(
        &root,
        &["--imds-endpoint", &format!("http://{}", server.addr)],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert_eq!(failed["instance"], "ec2");
    let note = failed["note"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(note.contains("imdsv2") || note.contains("token"), "{note}");
    assert!(
        server
            .log
            .lock()
            .expect("log")
            .iter()
            .all(|r| !r.starts_with("GET")),
        "fell back to IMDSv1"
    );
    assert_ne!(read(&root, "/etc/hostname"), "v1\n");
}

#[test]
fn an_unreachable_instance_url_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), ID);
    // A port nothing listens on: bind one and drop it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/instance.toml");
    let o = apply(
        &root,
        &[
            "--cmdline",
            &format!("console=ttyS0 cairn.instance={url} quiet"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert_eq!(failed["instance"], "cmdline");
    assert!(
        failed["note"].as_str().unwrap_or("").contains(&url),
        "{failed}"
    );
}
