//! The kubelet stand-in: the one thing of a kubelet the agent looks at, its health endpoint. A kubelet serves
//! `GET /healthz` → `200 ok` on `127.0.0.1:10248` (its `--healthz-bind-address` and `--healthz-port` defaults; k8sd
//! checks that port is free before a bootstrap or join: k8sd pkg/utils/checks/checks.go, the port in
//! pkg/k8sd/types/k8s_service_configs.go KubeletHealthzPort). A kubelet started with
//! `--protect-kernel-defaults=true` refuses to start on other kernel settings, so the stand-in serves nothing
//! until they hold, and retries as its service's restarts would.
//!
//! `K8S_DOUBLE_KUBELET_HEALTHZ=HOST:PORT` moves it (host tests, which run in parallel), `none` leaves it out.
//! It stops when the double's state is gone (the node left the cluster, or a host test's folder was removed).
//! The HTTP is written by hand on purpose: a test double answering one fixed request needs no server crate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::console::Console;

pub const DEFAULT_ADDRESS: &str = "127.0.0.1:10248";
/// How often the stand-in looks again at the kernel settings, and whether the state is still there.
const POLL: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_secs(2);

pub fn address() -> String {
    std::env::var("K8S_DOUBLE_KUBELET_HEALTHZ").unwrap_or_else(|_| DEFAULT_ADDRESS.into())
}

pub fn enabled() -> bool {
    address() != "none"
}

/// Runs the stand-in until the state file is gone. `kernel` says why a hardened kubelet would refuse to start
/// (`None`: it starts).
pub fn serve(state: &Path, kernel: impl Fn() -> Option<String>, console: &mut Console) -> i32 {
    let addr = address();
    let mut refused: Option<String> = None;
    while state.exists() {
        match kernel() {
            Some(why) => {
                if refused.as_deref() != Some(why.as_str()) {
                    console.line(&format!("kubelet refuses to start: {why}"));
                    refused = Some(why);
                }
                std::thread::sleep(RETRY);
            }
            None => break,
        }
    }
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            console.line(&format!("error: kubelet: bind {addr}: {e}"));
            return 1;
        }
    };
    if listener.set_nonblocking(true).is_err() {
        return 1;
    }
    console.line(&format!("kubelet healthz on {addr}"));
    while state.exists() {
        match listener.accept() {
            Ok((stream, _)) => answer(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    0
}

/// `GET /healthz` → `200 ok`, anything else → 404; one request per connection.
fn answer(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let (status, body) = if line.starts_with("GET /healthz ") {
        ("200 OK", "ok")
    } else {
        ("404 Not Found", "404 page not found\n")
    };
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
