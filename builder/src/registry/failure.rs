//! What can go wrong with one registry request, whether another attempt is worth it, how long to wait before it,
//! and how a request that failed for good is told to the user.
//!
//! The schedule: at most [`ATTEMPTS`] attempts per manifest, config or blob; between them [`FIRST_BACKOFF`],
//! doubling up to [`MAX_BACKOFF`], each plus up to [`JITTER_PERCENT`]% (0.5 s, 1 s, 2 s: about 3.5 s in all). A 429
//! with `Retry-After: SECONDS` waits that long instead, at most [`MAX_RETRY_AFTER`]. Retried: 5xx, 429, a stall, a
//! connection reset or closed before or during the response. Never retried: any other 4xx (401, 403 and 404 fail
//! at once), a failure to connect at all, a refused token request.

use std::time::Duration;

/// Attempts per request, the first included.
pub const ATTEMPTS: u32 = 4;
/// The wait after the first failed attempt; it doubles after each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts (without a `Retry-After`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Each wait is lengthened by a random amount up to this share of it, so parallel pulls do not retry in step.
pub const JITTER_PERCENT: u64 = 20;
/// The longest `Retry-After` honoured: a registry asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Whether a request was for a manifest (or index) or a blob (config or layer): the advice differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Manifest,
    Blob,
}

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The registry answered with an error status.
    Status {
        code: u16,
        /// The status line's words (`Internal Server Error`).
        reason: String,
        /// The OCI error codes and messages of the body, when it has them (`MANIFEST_UNKNOWN: manifest unknown`).
        detail: Option<String>,
        /// `Retry-After` in seconds, as sent.
        retry_after: Option<Duration>,
    },
    /// No connection could be made (refused, no route, name not found, TLS).
    Connect(String),
    /// The token service refused the credentials, or the registry's auth could not be negotiated.
    Auth(String),
    /// No response headers within the stall timeout.
    NoResponse(Duration),
    /// The body stopped arriving for the stall timeout.
    Stalled {
        received: u64,
        size: Option<u64>,
        timeout: Duration,
    },
    /// The connection was reset during the body.
    Reset { received: u64, size: Option<u64> },
    /// The connection closed (or the body ended) before the whole body was received.
    Closed { received: u64, size: Option<u64> },
    /// A 206 that is not the range asked for.
    BadRange(String),
    /// The request failed before any response (reset, closed before the status line): worth another try.
    Transport(String),
    /// The request could not be made at all (bad URL, redirect loop): not worth another try.
    Request(String),
    /// More than the most cairn accepts for this document.
    TooLarge { limit: u64 },
}

impl Failure {
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Status { code, .. } => *code == 429 || (500..600).contains(code),
            Failure::NoResponse(_)
            | Failure::Stalled { .. }
            | Failure::Reset { .. }
            | Failure::Closed { .. }
            | Failure::BadRange(_)
            | Failure::Transport(_) => true,
            Failure::Connect(_)
            | Failure::Auth(_)
            | Failure::Request(_)
            | Failure::TooLarge { .. } => false,
        }
    }

    /// How long to wait after this, the `failed`-th failed attempt (1-based), before the next one.
    pub fn wait(&self, failed: u32) -> Duration {
        if let Failure::Status {
            retry_after: Some(after),
            ..
        } = self
        {
            return (*after).min(MAX_RETRY_AFTER);
        }
        let base = FIRST_BACKOFF
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let base_ms = base.as_millis() as u64;
        base + Duration::from_millis(fastrand::u64(0..=base_ms * JITTER_PERCENT / 100))
    }

    /// What happened, in words.
    pub(crate) fn describe(&self) -> String {
        let (what, detail) = self.parts();
        what + &detail
    }

    /// What happened, and the registry's own words on it (` (CODE: message)`) or nothing.
    fn parts(&self) -> (String, String) {
        if let Failure::Status {
            code,
            reason,
            detail,
            ..
        } = self
        {
            let what = if reason.is_empty() {
                format!("the registry answered {code}")
            } else {
                format!("the registry answered {code} {reason}")
            };
            let detail = detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            return (what, detail);
        }
        let bytes = |received: &u64, size: &Option<u64>| match size {
            Some(s) => format!("{received} of {s} bytes"),
            None => format!("{received} bytes"),
        };
        let what = match self {
            Failure::Status { .. } => String::new(),
            Failure::Connect(m) => format!("cannot connect: {m}"),
            Failure::Auth(m) => format!("authentication failed: {m}"),
            Failure::NoResponse(t) => format!("no response for {}", seconds(*t)),
            Failure::Stalled {
                received,
                size,
                timeout,
            } => format!(
                "no data for {} after {}",
                seconds(*timeout),
                bytes(received, size)
            ),
            Failure::Reset { received, size } => {
                format!("the connection was reset after {}", bytes(received, size))
            }
            Failure::Closed { received, size } => {
                format!("the connection closed after {}", bytes(received, size))
            }
            Failure::BadRange(m) => format!("the registry answered a range request wrongly: {m}"),
            Failure::Transport(m) | Failure::Request(m) => format!("the request failed: {m}"),
            Failure::TooLarge { limit } => format!("larger than the {limit} bytes cairn accepts"),
        };
        (what, String::new())
    }

    fn hint(&self, target: Target) -> &'static str {
        match (self, target) {
            (
                Failure::Status {
                    code: 401 | 403, ..
                }
                | Failure::Auth(_),
                _,
            ) => "check the credentials in ~/.docker/config.json or $DOCKER_CONFIG",
            (Failure::Status { code: 404, .. }, Target::Manifest) => {
                "check the reference, or run `cairn pin PROFILE` to pin what its tag points at now"
            }
            (Failure::Status { code: 404, .. }, Target::Blob) => {
                "the registry does not have this blob: check the rock was pushed completely"
            }
            (Failure::Status { code: 429, .. }, _) => {
                "the registry limits the request rate: wait a while and retry, or log in for a higher limit"
            }
            (Failure::Connect(_), _) => "check the registry's address and that it is running",
            (Failure::Status { code, .. }, _) if (400..500).contains(code) => "check the reference",
            (Failure::Request(_) | Failure::TooLarge { .. }, _) => "check the reference",
            _ => "check the registry is reachable and retry",
        }
    }
}

/// `30 s`, `0.3 s`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// A request that failed for good: after its last attempt, or at once when the failure is not worth another.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", self.summary())]
pub struct RegistryError {
    /// What the request was for: `blob sha256:… of registry/repository`, `registry/repository@sha256:…`.
    pub what: String,
    pub target: Target,
    /// Every attempt's failure, in order; never empty.
    pub failures: Vec<Failure>,
}

impl RegistryError {
    pub fn new(what: String, target: Target, failures: Vec<Failure>) -> RegistryError {
        RegistryError {
            what,
            target,
            failures,
        }
    }

    /// The last attempt's failure.
    pub fn last(&self) -> Option<&Failure> {
        self.failures.last()
    }

    /// What happened, in words, then what to try.
    pub fn summary(&self) -> String {
        let Some(last) = self.failures.last() else {
            return "failed".into();
        };
        let told: Vec<String> = self.failures.iter().map(Failure::describe).collect();
        let what = match told.len() {
            1 => told[0].clone(),
            n if told.iter().all(|t| *t == told[0]) => {
                let (what, detail) = last.parts();
                format!("{what} {n} times{detail}")
            }
            n => format!("{n} attempts failed: {}", told.join("; ")),
        };
        format!("{what}; {}", last.hint(self.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> Failure {
        Failure::Status {
            code,
            reason: reason.into(),
            detail: None,
            retry_after: None,
        }
    }

    #[test]
    fn only_5xx_429_and_broken_transfers_are_retried() {
        for code in [500, 502, 503, 504, 429] {
            assert!(status(code, "").retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 416] {
            assert!(!status(code, "").retryable(), "{code}");
        }
        assert!(
            Failure::Reset {
                received: 1,
                size: Some(2)
            }
            .retryable()
        );
        assert!(Failure::NoResponse(Duration::from_secs(30)).retryable());
        assert!(!Failure::Connect("refused".into()).retryable());
        assert!(!Failure::Auth("denied".into()).retryable());
    }

    #[test]
    fn the_backoff_doubles_within_its_bounds() {
        for failed in 1..=8 {
            let base = FIRST_BACKOFF
                .saturating_mul(1 << (failed - 1))
                .min(MAX_BACKOFF);
            let w = status(503, "").wait(failed);
            assert!(
                w >= base && w <= base + base * JITTER_PERCENT as u32 / 100,
                "{failed}: {w:?}"
            );
        }
        let after = |s| Failure::Status {
            code: 429,
            reason: String::new(),
            detail: None,
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(after(2).wait(1), Duration::from_secs(2));
        assert_eq!(after(3600).wait(1), MAX_RETRY_AFTER);
    }

    #[test]
    fn the_summary_counts_repeats_and_gives_advice() {
        let e = RegistryError::new(
            "blob sha256:ab of r/x".into(),
            Target::Blob,
            vec![status(500, "Internal Server Error"); 4],
        );
        assert_eq!(
            e.to_string(),
            "blob sha256:ab of r/x: the registry answered 500 Internal Server Error 4 times; \
             check the registry is reachable and retry"
        );
        let e = RegistryError::new(
            "b".into(),
            Target::Blob,
            vec![
                Failure::Status {
                    code: 503,
                    reason: "Service Unavailable".into(),
                    detail: Some("UNAVAILABLE: later".into()),
                    retry_after: None,
                };
                2
            ],
        );
        assert!(
            e.to_string().starts_with(
                "b: the registry answered 503 Service Unavailable 2 times (UNAVAILABLE: later); "
            ),
            "{e}"
        );
        let e = RegistryError::new(
            "r/x@sha256:ab".into(),
            Target::Manifest,
            vec![status(404, "Not Found")],
        );
        assert!(e.to_string().contains("run `cairn pin PROFILE`"), "{e}");
        let e = RegistryError::new(
            "b".into(),
            Target::Blob,
            vec![
                Failure::Reset {
                    received: 1048576,
                    size: Some(5242880),
                },
                Failure::NoResponse(Duration::from_millis(300)),
            ],
        );
        assert_eq!(
            e.to_string(),
            "b: 2 attempts failed: the connection was reset after 1048576 of 5242880 bytes; \
             no response for 0.3 s; check the registry is reachable and retry"
        );
    }
}
