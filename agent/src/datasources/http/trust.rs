//! What an HTTPS request trusts, and how a refused certificate is put in words: the rustls client setup (ring,
//! TLS 1.3 and 1.2, the Mozilla roots plus the CA bundles that exist) and the wording of rustls's errors.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The bound on a CA bundle file (Debian's is about 200 KiB).
const MAX_CA_BUNDLE: u64 = 16 << 20;

/// The TLS client setup of one request: the trusted roots, and how to say what they are.
pub(super) struct Tls {
    pub config: Arc<ClientConfig>,
    /// `the Mozilla root set and /etc/ssl/certs/ca-certificates.crt`.
    pub trusted: String,
}

impl Tls {
    pub fn new(ca_bundles: &[PathBuf]) -> Result<Tls, String> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut trusted = vec!["the Mozilla root set".to_string()];
        for path in ca_bundles {
            if add_ca_bundle(&mut roots, path)? > 0 {
                trusted.push(path.display().to_string());
            }
        }
        // The provider is named: a build that also links another one (the workspace's other crates) must not
        // make this client pick by chance.
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Tls {
            config: Arc::new(config),
            trusted: trusted.join(" and "),
        })
    }
}

/// Adds the certificates of a PEM bundle to `roots`; `Ok(0)` when nothing is at `path` (or the file is blank),
/// else how many were added. Certificates that parse but cannot be trust anchors are skipped, as rustls's own
/// loaders do; a bundle with none that can is an error.
fn add_ca_bundle(roots: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let fail = |what: String| format!("CA bundle {}: {what}", path.display());
    // Checked before opening: opening a FIFO would block.
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) && fs::symlink_metadata(path).is_err() =>
        {
            return Ok(0);
        }
        Err(e) => return Err(fail(format!("cannot read: {e}"))),
    };
    if !meta.is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_BUNDLE + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CA_BUNDLE {
        return Err(fail(format!("larger than {MAX_CA_BUNDLE} bytes")));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(format!(
                "not a PEM certificate bundle: {}",
                describe_pem(&e)
            ))
        })?;
    if certs.is_empty() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(0);
        }
        return Err(fail(
            "not a PEM certificate bundle: no BEGIN CERTIFICATE section".to_string(),
        ));
    }
    let count = certs.len();
    match roots.add_parsable_certificates(certs) {
        (0, _) => Err(fail(format!(
            "none of its {count} certificates can be a trust anchor"
        ))),
        (added, _) => Ok(added),
    }
}

fn describe_pem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("no END {} line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(why) => format!("bad base64 ({why})"),
        other => other.to_string(),
    }
}

/// What a refused certificate is, in words.
pub(super) fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "unknown issuer (its chain does not lead to a trusted CA)".to_string()
        }
        CertificateError::NotValidForName => "name mismatch".to_string(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no name".to_string()
            } else {
                let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                names.join(", ")
            };
            format!(
                "name mismatch (it is for {names}, not {})",
                expected.to_str()
            )
        }
        CertificateError::Expired => "expired".to_string(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired on {} (the clock says {})",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::NotValidYet => "not valid yet (is the clock right?)".to_string(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "not valid before {} (the clock says {}: is it right?)",
            utc(*not_before),
            utc(*time)
        ),
        CertificateError::BadSignature => "bad signature".to_string(),
        CertificateError::BadEncoding => "badly encoded".to_string(),
        CertificateError::Revoked => "revoked".to_string(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not a TLS server certificate".to_string()
        }
        other => other.to_string(),
    }
}

/// A name of a certificate as webpki presents it (`DnsName("a.example")`, `IpAddress(192.0.2.1)`), bare.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(name)
}

/// A UNIX time as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc(time: UnixTime) -> String {
    let (year, month, day, h, m, s) = cairn_profile::time::civil(time.as_secs());
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn says_times_and_names_plainly() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::ZERO)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                951_782_400 + 3661
            ))),
            "2000-02-29 01:01:01 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                1_577_836_799
            ))),
            "2019-12-31 23:59:59 UTC"
        );
        assert_eq!(presented_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(presented_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn ca_bundles_absent_blank_or_not_files() {
        let tmp = crate::datasources::test_support::TempDir::new();
        let mut roots = RootCertStore::empty();
        let missing = tmp.path().join("missing.crt");
        assert_eq!(add_ca_bundle(&mut roots, &missing), Ok(0));
        // A parent that is a file: nothing there either.
        let blank = tmp.path().join("blank.crt");
        std::fs::write(&blank, " \n\n").unwrap();
        assert_eq!(add_ca_bundle(&mut roots, &blank.join("x")), Ok(0));
        assert_eq!(add_ca_bundle(&mut roots, &blank), Ok(0));
        assert!(roots.is_empty());
        let dangling = tmp.path().join("dangling.crt");
        std::os::unix::fs::symlink("/nonexistent/cairn.crt", &dangling).unwrap();
        let e = add_ca_bundle(&mut roots, &dangling).unwrap_err();
        assert!(
            e.starts_with(&format!("CA bundle {}: cannot read: ", dangling.display())),
            "{e}"
        );
        // Missing bundles leave the Mozilla roots.
        let tls = Tls::new(&[missing]).unwrap();
        assert_eq!(tls.trusted, "the Mozilla root set");
    }
}

#[cfg(test)]
mod proptests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    /// One CA certificate (PEM), made once: key generation is slow.
    fn ca_pem() -> &'static str {
        static PEM: OnceLock<String> = OnceLock::new();
        PEM.get_or_init(|| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().pem()
        })
    }

    /// A PEM section of `label` around random base64-ish text.
    fn section() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec![
                "CERTIFICATE",
                "PRIVATE KEY",
                "X509 CRL",
                "TRUSTED CERTIFICATE",
            ]),
            prop::collection::vec("[A-Za-z0-9+/=]{0,64}", 0..4),
            any::<bool>(),
        )
            .prop_map(|(label, lines, end)| {
                let mut out = format!("-----BEGIN {label}-----\n{}\n", lines.join("\n"));
                if end {
                    out.push_str(&format!("-----END {label}-----\n"));
                }
                out
            })
    }

    fn add(bytes: &[u8]) -> (Result<usize, String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.crt");
        fs::write(&path, bytes).unwrap();
        let mut roots = RootCertStore::empty();
        (
            add_ca_bundle(&mut roots, &path),
            format!("CA bundle {}: ", path.display()),
        )
    }

    proptest! {
        #![proptest_config(config(32))]

        /// Whatever a CA bundle file holds: blank is nothing, anything else without a usable certificate is an
        /// error naming the file, never a panic.
        #[test]
        fn a_bundle_without_a_certificate_is_refused(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(section(), 0..3).prop_map(|s| s.concat().into_bytes()),
                "[ \t\r\n]{0,8}".prop_map(String::into_bytes),
            ],
        ) {
            let (result, prefix) = add(&bytes);
            match result {
                Ok(n) => {
                    prop_assert_eq!(n, 0);
                    prop_assert!(bytes.iter().all(u8::is_ascii_whitespace), "{bytes:?}");
                }
                Err(e) => prop_assert!(e.starts_with(&prefix), "{e}"),
            }
        }

        /// A real CA among comments and other sections is found.
        #[test]
        fn a_certificate_among_other_text_is_trusted(
            before in "[ -~\n]{0,40}".prop_filter("not a PEM boundary", |t| !t.contains("-----")),
            other in prop::option::of((
                prop::sample::select(vec!["PRIVATE KEY", "X509 CRL", "PUBLIC KEY"]),
                // Whole groups of four: valid base64 (a section that is not is refused, whatever its kind).
                prop::collection::vec("([A-Za-z0-9+/]{4}){0,16}", 0..4),
            ).prop_map(|(label, lines)| {
                format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
            })),
        ) {
            let bundle = format!("{before}\n{}{}", other.unwrap_or_default(), ca_pem());
            let (result, _) = add(bundle.as_bytes());
            prop_assert_eq!(result, Ok(1));
        }
    }
}
