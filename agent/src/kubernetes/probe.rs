//! What a node can see of itself on every role: its membership through `k8s local-node-status`, and the kubelet's
//! health endpoint.
//!
//! `k8s status` is no use on a worker: k8sd restricts the cluster-status endpoint to control planes
//! (canonical/k8sd pkg/k8sd/api/endpoints.go, restrictWorkers in worker_access_handler.go). `local-node-status`
//! (cmd/k8s/k8s_local_node_status.go) is allowed everywhere: a member prints its node status and exits 0, a node
//! that is not one exits 1 with "The node is not part of a Kubernetes cluster" on stderr. The kubelet answers
//! `GET /healthz` with `ok` on `127.0.0.1:10248` (the kubelet's default health address; the port k8sd checks is
//! free before a bootstrap or join, pkg/k8sd/types/k8s_service_configs.go).

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_profile::command::{Command, CommandError};

use crate::engine::StepError;

/// The kubelet's health endpoint, as its defaults (`--healthz-bind-address`, `--healthz-port`) put it.
pub const KUBELET_HEALTHZ: &str = "http://127.0.0.1:10248/healthz";
/// What `local-node-status` prints on stderr for a node outside any cluster.
const NOT_A_MEMBER: &str = "The node is not part of a Kubernetes cluster";
/// How long one health request may take, and the pause between two.
const HEALTH_ATTEMPT: Duration = Duration::from_secs(5);
const HEALTH_PAUSE: Duration = Duration::from_secs(1);

/// This node as `k8s local-node-status --output-format json` prints it (k8s-snap-api api/type_node_status.go).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LocalNode {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    /// `control-plane`, `worker` or `unknown`.
    #[serde(default)]
    pub cluster_role: String,
}

/// `k8s local-node-status`: `Some` for a member, `None` for a node in no cluster; any other failure is an error.
pub fn local_node(k8s: &Path) -> Result<Option<LocalNode>, StepError> {
    let out = Command::new(k8s)
        .args(["local-node-status", "--output-format", "json"])
        .inherit_env()
        .capture_stdout()
        .run();
    match out {
        Ok(out) => {
            let node: LocalNode = serde_json::from_slice(&out.stdout).map_err(|e| {
                StepError::refused(format!(
                    "`k8s local-node-status` printed what is not a node status ({e}): {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                ))
            })?;
            Ok(Some(node))
        }
        Err(CommandError::Failed { stderr, .. }) if stderr.contains(NOT_A_MEMBER) => Ok(None),
        Err(CommandError::Failed { status, stderr, .. }) => Err(StepError::refused(format!(
            "`k8s local-node-status` failed ({status}): {}",
            stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Waits up to `wait` for the kubelet's health endpoint `url` to answer `200 ok`; the error says what it last got.
pub fn kubelet_healthy(url: &str, wait: Duration) -> Result<Duration, StepError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(HEALTH_ATTEMPT))
        .http_status_as_error(false)
        .build()
        .into();
    let start = Instant::now();
    let deadline = start + wait;
    loop {
        let last = match agent.get(url).call() {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r
                    .body_mut()
                    .with_config()
                    .limit(4096)
                    .read_to_string()
                    .unwrap_or_default();
                if status == 200 && body.trim() == "ok" {
                    return Ok(start.elapsed());
                }
                format!("HTTP {status}: {}", body.trim())
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(StepError::refused(format!(
                "the kubelet's health endpoint {url} did not answer ok within {}s (last: {last})",
                wait.as_secs()
            )));
        }
        std::thread::sleep(HEALTH_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_status_reads_as_the_cli_prints_it() {
        let worker: LocalNode = serde_json::from_str(
            "{\n  \"name\": \"w\",\n  \"address\": \"10.0.2.16\",\n  \"cluster-role\": \"worker\"\n}\n",
        )
        .unwrap();
        assert_eq!(worker.cluster_role, "worker");
        let cp: LocalNode = serde_json::from_str(
            r#"{"name":"c","address":"10.0.2.15:6400","cluster-role":"control-plane","datastore-role":"voter"}"#,
        )
        .unwrap();
        assert_eq!(cp.address, "10.0.2.15:6400");
    }

    #[test]
    fn an_unhealthy_kubelet_is_named_with_what_it_answered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        drop(listener);
        let e = kubelet_healthy(&url, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "the kubelet's health endpoint {url} did not answer ok within 0s (last: "
            )),
            "{e}"
        );
    }
}
