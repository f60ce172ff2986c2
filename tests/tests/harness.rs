//! Tests of the harness itself, against the real docker-registry. They do
//! not need the cairn binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cairn_e2e::image::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, OCI_INDEX, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use cairn_e2e::push::{Challenge, Response, push_blob_raw, put_manifest_raw};
use cairn_e2e::registry::shared;
use cairn_e2e::{
    Auth, Client, Compression, Image, Index, LayerBuilder, MediaTypes, Registry, push_image,
    push_index, sha256_digest, write_profile,
};
use serde_json::{Value, json};

/// A plain HTTP exchange with no auth handling.
fn plain(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    Client::new(addr, None)
        .raw(method, &format!("http://{addr}{path}"), headers, &[])
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Four layers, one per compression, with most entry kinds.
fn multi_layer_image(media_types: MediaTypes) -> Image {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, "ID=cairn-e2e\n")
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", 0o4755, b"#!/bin/sh\necho tool\n")
        .symlink("bin", "usr/bin")
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .fifo("run-fifo")
        .char_device("dev-null", 1, 3);
    let second = LayerBuilder::new()
        .whiteout("etc/os-release")
        .dir("var/cache", 0o755)
        .opaque("var/cache")
        .file_with_xattrs(
            "usr/bin/ping",
            0o755,
            b"ping",
            &[("security.capability", &[1, 0, 0, 2, 0, 32, 0, 0])],
        );
    let third = LayerBuilder::new().file(&format!("opt/{}", "n".repeat(150)), 0o644, b"long");
    let fourth = LayerBuilder::new()
        .file(&format!("opt/{}", "p".repeat(150)), 0o644, b"pax")
        .pax_names()
        .file_owned("home/user/.profile", 0o600, 1000, 1000, b"x");
    let mut b = Image::builder()
        .media_types(media_types)
        .layer_from(&base, Compression::Gzip)
        .layer_from(&second, Compression::GzipMultiMember)
        .layer_from(&fourth, Compression::None);
    if media_types == MediaTypes::Oci {
        b = b.layer_from(&third, Compression::Zstd);
    }
    b.build()
}

#[test]
fn anonymous_push_and_read_back() {
    let reg = Registry::start(Auth::Anonymous);
    let image = multi_layer_image(MediaTypes::Oci);
    let pushed = push_image(&reg, "e2e/anon", "v1", &image);
    assert_eq!(pushed.manifest_digest, image.manifest_digest);
    assert_eq!(pushed.index_digest, None);
    assert_eq!(pushed.config_digest, image.config_digest);
    assert_eq!(pushed.layer_digests, image.layer_digests());
    assert_eq!(
        pushed.reference_by_digest,
        format!("{}/e2e/anon:v1@{}", reg.addr(), image.manifest_digest)
    );

    let resp = plain(
        &reg.addr(),
        "GET",
        "/v2/e2e/anon/manifests/v1",
        &[("Accept", MANIFEST_ACCEPT)],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, image.manifest);
    assert_eq!(sha256_digest(&resp.body), pushed.manifest_digest);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );
    assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
    let m: Value = serde_json::from_slice(&resp.body).expect("manifest JSON");
    assert_eq!(m["layers"][3]["mediaType"], json!(OCI_LAYER_ZSTD));

    for layer in &image.layers {
        let blob = plain(
            &reg.addr(),
            "GET",
            &format!("/v2/e2e/anon/blobs/{}", layer.digest),
            &[],
        );
        assert_eq!(blob.status, 200);
        assert_eq!(sha256_digest(&blob.body), layer.digest);
    }

    // A second push finds every blob and uploads nothing.
    let uploads_before = reg.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(uploads_before, image.layers.len() + 1);
    push_image(&reg, "e2e/anon", "v2", &image);
    let requests = reg.requests();
    assert_eq!(
        requests.iter().filter(|r| r.method == "POST").count(),
        uploads_before
    );
    assert!(reg.request_count() > 10, "{requests:?}");
}

#[test]
fn docker_media_types() {
    let reg = shared();
    let image = multi_layer_image(MediaTypes::DockerV2);
    let pushed = push_image(reg, "e2e/docker", "v1", &image);
    let resp = Client::for_registry(reg)
        .get_manifest("e2e/docker", "v1")
        .expect("get manifest");
    assert_eq!(resp.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(sha256_digest(&resp.body), pushed.manifest_digest);
    let m: Value = serde_json::from_slice(&resp.body).expect("manifest JSON");
    assert_eq!(
        m["config"]["mediaType"],
        json!("application/vnd.docker.container.image.v1+json")
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        json!("application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
}

#[test]
fn basic_auth() {
    let reg = Registry::start(Auth::basic("alice", "s3cret"));
    let image = Image::simple("amd64", "basic");
    let pushed = push_image(&reg, "e2e/basic", "v1", &image);

    let path = "/v2/e2e/basic/manifests/v1";
    let accept = ("Accept", MANIFEST_ACCEPT);
    let anon = plain(&reg.addr(), "GET", path, &[accept]);
    assert_eq!(anon.status, 401);
    let challenge = Challenge::parse(anon.header("www-authenticate").expect("a challenge"))
        .expect("parse the challenge");
    assert_eq!(challenge.scheme, "basic");

    let wrong = basic("alice", "wrong");
    let resp = plain(
        &reg.addr(),
        "GET",
        path,
        &[accept, ("Authorization", &wrong)],
    );
    assert_eq!(resp.status, 401);
    let unknown = basic("mallory", "s3cret");
    let resp = plain(
        &reg.addr(),
        "GET",
        path,
        &[accept, ("Authorization", &unknown)],
    );
    assert_eq!(resp.status, 401);

    let right = reg.basic_auth_header().expect("credentials");
    let resp = plain(
        &reg.addr(),
        "GET",
        path,
        &[accept, ("Authorization", &right)],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(sha256_digest(&resp.body), pushed.manifest_digest);

    // The client with wrong credentials cannot push.
    let err = Client::new(&reg.addr(), Some(("alice", "wrong")))
        .push_image("e2e/basic", "v2", &image)
        .expect_err("wrong credentials must fail");
    assert_eq!(err.status, Some(401), "{err}");
}

fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        let part = parts.next().expect("a JWT part");
        serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(part).expect("base64url"))
            .expect("JSON")
    };
    let header = decode();
    let claims = decode();
    (header, claims)
}

#[test]
fn token_auth() {
    let reg = Registry::start(Auth::token("bob", "hunter2"));
    let issuer = reg.token_issuer().expect("token registry has an issuer");
    let index = Index::multi_arch(MediaTypes::Oci, "token");
    let client = Client::for_registry(&reg);
    let pushed = client
        .push_index("e2e/token", "v1", &index)
        .expect("push with token auth");
    // One client, one repository: one token, cached for every request.
    assert_eq!(reg.token_requests(), 1, "{:?}", reg.token_log());
    let log = reg.token_log();
    assert_eq!(log[0].user.as_deref(), Some("bob"));
    assert_eq!(log[0].scopes, ["repository:e2e/token:pull,push"]);
    assert_eq!(log[0].service.as_deref(), Some(issuer.service()));
    assert!(log[0].granted);

    // Plain HTTP, step by step: challenge, token, manifest.
    let path = "/v2/e2e/token/manifests/v1";
    let accept = ("Accept", MANIFEST_ACCEPT);
    let anon = plain(&reg.addr(), "GET", path, &[accept]);
    assert_eq!(anon.status, 401);
    let challenge = Challenge::parse(anon.header("www-authenticate").expect("a challenge"))
        .expect("parse the challenge");
    assert_eq!(challenge.scheme, "bearer");
    assert_eq!(challenge.param("realm"), Some(issuer.realm().as_str()));
    assert_eq!(challenge.param("service"), Some(issuer.service()));
    assert_eq!(challenge.param("scope"), Some("repository:e2e/token:pull"));
    let realm_url = format!(
        "{}?service={}&scope=repository%3Ae2e%2Ftoken%3Apull",
        issuer.realm(),
        issuer.service()
    );
    let raw = Client::new(&reg.addr(), None);
    let issued = raw
        .raw(
            "GET",
            &realm_url,
            &[("Authorization", &basic("bob", "hunter2"))],
            &[],
        )
        .expect("token request");
    assert_eq!(issued.status, 200, "{}", issued.text());
    let body: Value = serde_json::from_slice(&issued.body).expect("token JSON");
    let token = body["token"].as_str().expect("token").to_string();
    assert_eq!(body["access_token"], json!(token));
    assert_eq!(body["expires_in"], json!(300));
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], json!("RS256"));
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(claims["aud"], json!(issuer.service()));
    assert_eq!(claims["iss"], json!(issuer.issuer()));
    assert_eq!(claims["sub"], json!("bob"));
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "e2e/token", "actions": ["pull"]}])
    );
    let bearer = format!("Bearer {token}");
    let resp = plain(
        &reg.addr(),
        "GET",
        path,
        &[accept, ("Authorization", &bearer)],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.body, index.bytes);
    assert_eq!(Some(sha256_digest(&resp.body)), pushed.index_digest);
    // A pull token does not allow a push.
    let post = plain(
        &reg.addr(),
        "POST",
        "/v2/e2e/token/blobs/uploads/",
        &[("Authorization", &bearer)],
    );
    assert_eq!(post.status, 401);
    // Nor another repository.
    let other = plain(
        &reg.addr(),
        "GET",
        "/v2/e2e/other/manifests/v1",
        &[accept, ("Authorization", &bearer)],
    );
    assert_eq!(other.status, 401);

    // The issuer refuses wrong or missing credentials.
    for auth in [
        Some(basic("bob", "wrong")),
        Some(basic("eve", "hunter2")),
        None,
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let resp = raw
            .raw("GET", &realm_url, &headers, &[])
            .expect("token request");
        assert_eq!(resp.status, 401, "{auth:?}");
    }
    let err = Client::new(&reg.addr(), Some(("bob", "wrong")))
        .get_manifest("e2e/token", "v1")
        .expect_err("wrong credentials");
    assert_eq!(err.status, Some(401), "{err}");

    // The registry checks the token: wrong audience, expired, or signed
    // by another key are refused; a minted one is accepted.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let access = json!([{"type": "repository", "name": "e2e/token", "actions": ["pull"]}]);
    let wrong_aud = issuer.sign_claims(&json!({
        "iss": issuer.issuer(), "sub": "bob", "aud": "another-service",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": "w1", "access": access,
    }));
    let expired = issuer.sign_claims(&json!({
        "iss": issuer.issuer(), "sub": "bob", "aud": issuer.service(),
        "exp": now - 600, "nbf": now - 900, "iat": now - 900, "jti": "w2", "access": access,
    }));
    let other_reg = Registry::start(Auth::token("bob", "hunter2"));
    let foreign =
        other_reg
            .token_issuer()
            .expect("issuer")
            .mint("bob", &["repository:e2e/token:pull"], 300);
    for (what, token) in [
        ("wrong audience", wrong_aud),
        ("expired", expired),
        ("another key", foreign),
    ] {
        let auth = format!("Bearer {token}");
        let resp = plain(
            &reg.addr(),
            "GET",
            path,
            &[accept, ("Authorization", &auth)],
        );
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
    }
    let minted = issuer.mint("bob", &["repository:e2e/token:pull"], 300);
    let auth = format!("Bearer {minted}");
    let resp = plain(
        &reg.addr(),
        "GET",
        path,
        &[accept, ("Authorization", &auth)],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn multi_arch_indexes() {
    let reg = shared();
    for (media_types, name, index_type) in [
        (MediaTypes::Oci, "e2e/index-oci", OCI_INDEX),
        (
            MediaTypes::DockerV2,
            "e2e/index-docker",
            DOCKER_MANIFEST_LIST,
        ),
    ] {
        let index = Index::multi_arch(media_types, name);
        let pushed = push_index(reg, name, "v1", &index);
        assert_eq!(pushed.index_digest.as_deref(), Some(index.digest.as_str()));
        assert_eq!(pushed.digest, index.digest);
        assert_eq!(
            pushed.reference_by_digest,
            format!("{}/{name}:v1@{}", reg.addr(), index.digest)
        );
        let amd64 = index.image_for("amd64").expect("amd64 image");
        assert_eq!(pushed.manifest_digest, amd64.manifest_digest);
        assert_eq!(pushed.manifests.len(), index.manifests.len());

        let resp = plain(
            &reg.addr(),
            "GET",
            &format!("/v2/{name}/manifests/v1"),
            &[("Accept", MANIFEST_ACCEPT)],
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some(index_type));
        assert_eq!(sha256_digest(&resp.body), index.digest);
        let json: Value = serde_json::from_slice(&resp.body).expect("index JSON");
        for entry in json["manifests"].as_array().expect("manifests") {
            let digest = entry["digest"].as_str().expect("digest");
            let m = plain(
                &reg.addr(),
                "GET",
                &format!("/v2/{name}/manifests/{digest}"),
                &[("Accept", MANIFEST_ACCEPT)],
            );
            assert_eq!(m.status, 200);
            assert_eq!(sha256_digest(&m.body), digest);
        }
        let platforms: Vec<&str> = json["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
            .collect();
        if media_types == MediaTypes::Oci {
            assert_eq!(platforms, ["amd64", "arm64", "unknown"]);
        } else {
            assert_eq!(platforms, ["amd64", "arm64"]);
        }
    }
}

#[test]
fn corrupted_blob_is_served_corrupted() {
    let reg = shared();
    let image = Image::simple("amd64", "corrupt me");
    let pushed = push_image(reg, "e2e/corrupt", "v1", &image);
    let digest = &pushed.layer_digests[0];
    let path = reg.blob_path(digest);
    assert!(path.is_file(), "{}", path.display());
    assert_eq!(std::fs::read(&path).expect("blob"), image.layers[0].blob);
    reg.corrupt_blob(digest);
    let blob = Client::for_registry(reg)
        .get_blob("e2e/corrupt", digest)
        .expect("get blob");
    assert_eq!(blob.len(), image.layers[0].blob.len());
    assert_ne!(blob, image.layers[0].blob);
    assert_ne!(&sha256_digest(&blob), digest);
}

#[test]
fn raw_pushes_and_lying_manifests() {
    let reg = shared();
    let name = "e2e/raw";
    let digest = push_blob_raw(reg, name, b"hand-made bytes").expect("push a raw blob");
    assert_eq!(digest, sha256_digest(b"hand-made bytes"));

    // A wrong digest for an upload is refused by the registry.
    let err = Client::for_registry(reg)
        .upload_blob_as(name, &sha256_digest(b"other"), b"hand-made bytes")
        .expect_err("digest mismatch");
    assert_eq!(err.status, Some(400), "{err}");

    // A manifest naming a blob the registry lacks is refused...
    let image = Image::simple("amd64", "raw");
    let mut lying = image.manifest_json();
    lying["layers"][0]["digest"] = json!(sha256_digest(b"never pushed"));
    let bytes = serde_json::to_vec(&lying).expect("JSON");
    let err = put_manifest_raw(reg, name, "bad", OCI_MANIFEST, &bytes).expect_err("refused");
    assert_eq!(err.status, Some(400), "{err}");
    assert!(err.body.contains("MANIFEST_BLOB_UNKNOWN"), "{err}");

    // ...but one pointing at another existing blob is stored as is: the
    // registry does not check what a layer contains.
    push_image(reg, name, "good", &image);
    let mut lying = image.manifest_json();
    lying["layers"][0]["digest"] = json!(digest);
    lying["layers"][0]["size"] = json!(b"hand-made bytes".len());
    let bytes = serde_json::to_vec(&lying).expect("JSON");
    let d = put_manifest_raw(reg, name, "lying", OCI_MANIFEST, &bytes).expect("stored");
    assert_eq!(d, sha256_digest(&bytes));
    let back = Client::for_registry(reg)
        .get_manifest(name, "lying")
        .expect("get");
    assert_eq!(back.body, bytes);
}

#[test]
fn skopeo_sees_valid_images() {
    if Command::new("skopeo").arg("--version").output().is_err() {
        panic!("skopeo is missing: apt-get install -y skopeo");
    }
    let reg = Registry::start(Auth::token("carol", "pw"));
    let index = Index::multi_arch(MediaTypes::Oci, "skopeo");
    let pushed = push_index(&reg, "e2e/skopeo", "v1", &index);
    let image = multi_layer_image(MediaTypes::DockerV2);
    let single = push_image(&reg, "e2e/skopeo", "single", &image);

    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .args(["--tls-verify=false", "--creds", "carol:pw"])
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("docker://{}", pushed.reference),
    ]);
    assert_eq!(sha256_digest(&raw), index.digest);

    let info = skopeo(&["inspect", &format!("docker://{}", single.reference)]);
    let info: Value = serde_json::from_slice(&info).expect("skopeo JSON");
    assert_eq!(info["Digest"], json!(single.manifest_digest));
    assert_eq!(info["Architecture"], json!("amd64"));
    assert_eq!(info["Layers"], json!(single.layer_digests));

    // And the arm64 image of the index, resolved by skopeo itself.
    let info = skopeo(&[
        "inspect",
        "--override-arch",
        "arm64",
        &format!("docker://{}", pushed.reference),
    ]);
    let info: Value = serde_json::from_slice(&info).expect("skopeo JSON");
    let arm64 = index.image_for("arm64").expect("arm64");
    // skopeo reports the digest of what the tag points at (the index) and
    // the platform image's details.
    assert_eq!(info["Digest"], json!(index.digest));
    assert_eq!(info["Architecture"], json!("arm64"));
    assert_eq!(info["Layers"], json!(arm64.layer_digests()));
}

#[test]
fn stop_and_restart() {
    let mut reg = Registry::start(Auth::Anonymous);
    let image = Image::simple("amd64", "restart");
    let pushed = push_image(&reg, "e2e/restart", "v1", &image);
    let addr = reg.addr();
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        Client::new(&addr, None).get("/v2/").is_err(),
        "nothing answers after stop"
    );
    reg.restart();
    assert_eq!(reg.addr(), addr);
    let back = Client::for_registry(&reg)
        .get_manifest("e2e/restart", "v1")
        .expect("storage survives a restart");
    assert_eq!(sha256_digest(&back.body), pushed.manifest_digest);
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after "(comm)"; Z is a zombie (dead).
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_dead(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !pid_alive(pid)
}

#[test]
fn drop_kills_and_cleans() {
    let reg = Registry::start(Auth::basic("u", "p"));
    let pid = reg.pid().expect("running");
    let dir = reg.dir().to_path_buf();
    assert!(pid_alive(pid));
    drop(reg);
    assert!(wait_dead(pid, Duration::from_secs(5)));
    assert!(!dir.exists());
}

#[test]
fn shared_registry_outlives_the_thread_that_started_it() {
    let addr = std::thread::spawn(|| shared().addr())
        .join()
        .expect("thread");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shared().addr(), addr);
    let resp = plain(&addr, "GET", "/v2/", &[]);
    assert_eq!(resp.status, 200);
}

/// Not a test on its own: when run by `registry_dies_with_the_test_process`
/// (with CAIRN_E2E_HELPER set) it starts the shared registry, prints its
/// pid and directory, then exits or waits to be killed.
#[test]
fn helper_child_registry() {
    let Ok(mode) = std::env::var("CAIRN_E2E_HELPER") else {
        return;
    };
    let reg = shared();
    println!(
        "REGISTRY pid={} dir={}",
        reg.pid().expect("running"),
        reg.dir().display()
    );
    if mode == "wait" {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn registry_dies_with_the_test_process() {
    let exe = std::env::current_exe().expect("test binary path");
    for mode in ["exit", "wait"] {
        let mut child = Command::new(&exe)
            .args(["--exact", "helper_child_registry", "--nocapture"])
            .env("CAIRN_E2E_HELPER", mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-run the test binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let line = lines
            .by_ref()
            .find(|l| l.starts_with("REGISTRY "))
            .expect("the helper prints the registry pid");
        let mut fields = line.split_whitespace().skip(1);
        let pid: u32 = fields
            .next()
            .and_then(|f| f.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .expect("pid=N");
        let dir = fields
            .next()
            .and_then(|f| f.strip_prefix("dir="))
            .expect("dir=PATH")
            .to_string();
        if mode == "wait" {
            assert!(pid_alive(pid));
            // SIGKILL: no atexit, no destructor; only PDEATHSIG can act.
            child.kill().expect("kill the helper");
        }
        // Read the rest so the helper never writes into a closed pipe.
        lines.for_each(drop);
        child.wait().expect("wait for the helper");
        assert!(
            wait_dead(pid, Duration::from_secs(5)),
            "{mode}: registry {pid} outlived its test process"
        );
        if mode == "exit" {
            assert!(!std::path::Path::new(&dir).exists(), "atexit removed {dir}");
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn profile_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_profile(
        dir.path(),
        "node",
        "127.0.0.1:5000/base:v1@sha256:00",
        &["127.0.0.1:5000/a:v1", "127.0.0.1:5000/b:v1"],
        "[output]\nformat = \"raw\"\n",
    );
    let text = std::fs::read_to_string(&path).expect("profile");
    assert_eq!(
        text,
        "schema = 1\nname = \"node\"\nversion = \"1.0.0\"\narch = \"amd64\"\n\n\
         [base]\nrock = \"127.0.0.1:5000/base:v1@sha256:00\"\n\n\
         [[layer]]\nrock = \"127.0.0.1:5000/a:v1\"\n\n\
         [[layer]]\nrock = \"127.0.0.1:5000/b:v1\"\n\n\
         [output]\nformat = \"raw\"\n"
    );
}

#[test]
fn docker_config_fixture() {
    let basic_reg = Registry::start(Auth::basic("dora", "pw1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let docker =
        cairn_e2e::write_docker_config(&dir.path().join("docker"), &[&basic_reg, shared()]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).expect("config.json"))
            .expect("JSON");
    let auths = config["auths"].as_object().expect("auths");
    // The anonymous registry needs no entry.
    assert_eq!(auths.len(), 1);
    assert_eq!(
        auths[&basic_reg.addr()]["auth"],
        json!(STANDARD.encode("dora:pw1"))
    );
}
