//! A tiny Docker token issuer (the "realm" of the registry's `auth: token:`
//! mode), running in a thread of the test process.
//!
//! Protocol (<https://distribution.github.io/distribution/spec/auth/token/>):
//! `GET /token?service=S&scope=repository:NAME:pull,push` with HTTP basic
//! credentials. Wrong or missing credentials get 401; right ones get 200
//! `{"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": ...}`.
//! The OAuth2 form (`POST /token` with `grant_type=password`) is answered too.
//!
//! JWTs are RS256, signed with `openssl dgst -sha256 -sign` using an RSA-2048
//! key made at start; the JOSE header carries the self-signed certificate in
//! `x5c` (base64 DER). The registry is given the same certificate as its
//! `rootcertbundle`, so the `x5c` chain verifies against it.
//!
//! Every request is recorded ([`TokenIssuer::requests`]) so a test can
//! assert how often a client fetched tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// Default lifetime of an issued token, in seconds.
pub const DEFAULT_EXPIRES_IN: u64 = 300;

/// One request the issuer received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The basic-auth (or form) user name, if any was sent.
    pub user: Option<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// Every `scope` parameter (a client may send several).
    pub scopes: Vec<String>,
    /// Whether a token was issued (false: answered 401/400/404).
    pub granted: bool,
}

/// One `access` entry of a token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses a scope `TYPE:NAME:ACTION,ACTION` (the name may contain `:`,
    /// e.g. a port is never there but `repository(plugin)` types exist).
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        Some(Access {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// Key material and the names the registry must be configured with.
struct Signer {
    key_path: PathBuf,
    cert_path: PathBuf,
    /// Base64 (standard alphabet, padded) DER of the certificate, for `x5c`.
    cert_der_b64: String,
    issuer: String,
    service: String,
}

impl Signer {
    fn create(dir: &Path, issuer: &str, service: &str) -> Signer {
        let key_path = dir.join("token-signing-key.pem");
        let cert_path = dir.join("token-signing-cert.pem");
        let der_path = dir.join("token-signing-cert.der");
        run_openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            path_str(&key_path),
            "-out",
            path_str(&cert_path),
            "-days",
            "30",
            "-subj",
            "/CN=cairn-e2e-token-issuer",
        ]);
        run_openssl(&[
            "x509",
            "-in",
            path_str(&cert_path),
            "-outform",
            "DER",
            "-out",
            path_str(&der_path),
        ]);
        let der = std::fs::read(&der_path).expect("read the DER certificate openssl wrote");
        Signer {
            key_path,
            cert_path,
            cert_der_b64: STANDARD.encode(der),
            issuer: issuer.to_string(),
            service: service.to_string(),
        }
    }

    /// Signs `claims` as an RS256 JWT with `x5c` in the header.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [self.cert_der_b64],
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("JSON header")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("JSON claims")),
        );
        // RSASSA-PKCS1-v1_5 over SHA-256 is exactly what `openssl dgst
        // -sha256 -sign RSAKEY` outputs, so no conversion is needed (an EC key
        // would need its DER signature turned into JOSE r||s).
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", path_str(&self.key_path)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `openssl dgst` (is openssl installed?)");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(signing_input.as_bytes())
            .expect("write the JWT signing input to openssl");
        let out = child.wait_with_output().expect("wait for `openssl dgst`");
        assert!(
            out.status.success(),
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&out.stdout))
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn run_openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

struct State {
    signer: Signer,
    user: String,
    password: String,
    expires_in: AtomicU64,
    next_jti: AtomicU64,
    log: Mutex<Vec<TokenRequest>>,
}

impl State {
    /// The claims of a token for `subject` granting `scopes` as requested.
    fn claims(&self, subject: &str, scopes: &[String], expires_in: u64) -> Value {
        let now = now();
        let jti = format!(
            "cairn-e2e-{}-{}",
            std::process::id(),
            self.next_jti.fetch_add(1, Ordering::Relaxed)
        );
        let access: Vec<Value> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(Access::parse_scope)
            .map(|a| json!({"type": a.kind, "name": a.name, "actions": a.actions}))
            .collect();
        json!({
            "iss": self.signer.issuer,
            "sub": subject,
            "aud": self.signer.service,
            "exp": now + expires_in,
            // A little slack for clock reading differences.
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": jti,
            "access": access,
        })
    }
}

/// The running issuer. Stopped (thread joined) on drop.
pub struct TokenIssuer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    /// Makes a key and certificate in `dir` and starts serving on a free
    /// loopback port. Only `user`/`password` get tokens.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenIssuer {
        let signer = Signer::create(dir, "cairn-e2e-issuer", "cairn-e2e-registry");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token issuer on loopback");
        let addr = listener.local_addr().expect("issuer local address");
        let state = Arc::new(State {
            signer,
            user: user.to_string(),
            password: password.to_string(),
            expires_in: AtomicU64::new(DEFAULT_EXPIRES_IN),
            next_jti: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("cairn-e2e-token-issuer".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let state = Arc::clone(&state);
                        // One thread per connection: a slow client must not
                        // hold up the others.
                        let _ = std::thread::Builder::new()
                            .name("cairn-e2e-token-conn".into())
                            .spawn(move || {
                                let _ = serve(conn, &state);
                            });
                    }
                })
                .expect("spawn the token issuer thread")
        };
        TokenIssuer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `service` (JWT `aud`) the registry is configured with.
    pub fn service(&self) -> &str {
        &self.state.signer.service
    }

    /// The `issuer` (JWT `iss`) the registry is configured with.
    pub fn issuer(&self) -> &str {
        &self.state.signer.issuer
    }

    /// PEM of the self-signed certificate: the registry's `rootcertbundle`.
    pub fn cert_path(&self) -> &Path {
        &self.state.signer.cert_path
    }

    /// Lifetime (`expires_in` and `exp - iat`) of tokens issued from now on.
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// All requests received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.log.lock().expect("token log lock").clone()
    }

    /// Mints a token directly (no HTTP), e.g. to give a test a token with
    /// chosen scopes. `expires_in` may be 0 for an already-expiring one.
    pub fn mint(&self, subject: &str, scopes: &[&str], expires_in: u64) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.state
            .signer
            .sign(&self.state.claims(subject, &scopes, expires_in))
    }

    /// Signs arbitrary claims with the issuer's key (header as usual), to
    /// forge tokens with a wrong audience, issuer or expiry.
    pub fn sign_claims(&self, claims: &Value) -> String {
        self.state.signer.sign(claims)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decodes `%XX` and `+` (form/query encoding).
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn respond(conn: &mut TcpStream, status: u16, reason: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn serve(mut conn: TcpStream, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;

    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut params = parse_pairs(query);
    let mut creds = authorization.as_deref().and_then(basic_credentials);
    if method == "POST" {
        let form = parse_pairs(&String::from_utf8_lossy(&body));
        if creds.is_none() {
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if get("grant_type").as_deref() == Some("password")
                && let (Some(u), Some(p)) = (get("username"), get("password"))
            {
                creds = Some((u, p));
            }
        }
        params.extend(form);
    }
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let mut record = TokenRequest {
        method: method.clone(),
        user: creds.as_ref().map(|(u, _)| u.clone()),
        service: service.clone(),
        scopes: scopes.clone(),
        granted: false,
    };

    if path != "/token" || (method != "GET" && method != "POST") {
        state.log.lock().expect("token log lock").push(record);
        respond(
            &mut conn,
            404,
            "Not Found",
            "",
            br#"{"details":"not found"}"#,
        );
        return Ok(());
    }
    let authorized = matches!(&creds, Some((u, p)) if *u == state.user && *p == state.password);
    if !authorized {
        state.log.lock().expect("token log lock").push(record);
        respond(
            &mut conn,
            401,
            "Unauthorized",
            "WWW-Authenticate: Basic realm=\"cairn-e2e-token\"\r\n",
            br#"{"details":"incorrect username or password"}"#,
        );
        return Ok(());
    }
    if service
        .as_deref()
        .is_some_and(|s| s != state.signer.service)
    {
        state.log.lock().expect("token log lock").push(record);
        respond(
            &mut conn,
            400,
            "Bad Request",
            "",
            br#"{"details":"unknown service"}"#,
        );
        return Ok(());
    }
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    let user = creds.map(|(u, _)| u).unwrap_or_default();
    let token = state.signer.sign(&state.claims(&user, &scopes, expires_in));
    record.granted = true;
    state.log.lock().expect("token log lock").push(record);
    let issued_at = now();
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": cairn_profile::time::rfc3339(issued_at),
    });
    respond(
        &mut conn,
        200,
        "OK",
        "",
        &serde_json::to_vec(&body).expect("token JSON"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_parsing() {
        let a = Access::parse_scope("repository:a/b:pull,push").expect("scope");
        assert_eq!(a.kind, "repository");
        assert_eq!(a.name, "a/b");
        assert_eq!(a.actions, ["pull", "push"]);
        let c = Access::parse_scope("registry:catalog:*").expect("scope");
        assert_eq!(c.actions, ["*"]);
    }

    #[test]
    fn url_decoding() {
        assert_eq!(
            url_decode("repository%3Aa%2Fb%3Apull+x"),
            "repository:a/b:pull x"
        );
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz"), "%zz");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(cairn_profile::time::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            cairn_profile::time::rfc3339(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            cairn_profile::time::rfc3339(951_782_400),
            "2000-02-29T00:00:00Z"
        );
    }
}
