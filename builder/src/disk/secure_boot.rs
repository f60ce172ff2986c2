//! Signing for UEFI Secure Boot: systemd-boot and each UKI get an Authenticode signature (PKCS#7 SignedData over
//! the PE's Authenticode digest) made with the user's key, which never enters the image or the report (the
//! certificate's fingerprint does).
//!
//! The SignedData is assembled here from RustCrypto's cms/x509-cert types rather than by running sbsign: sbsign
//! adds a signing time, so two builds would never give the same bytes. Here there is no time, RSA PKCS#1 v1.5 is
//! deterministic, and the same inputs and key give the same image. The key is one of:
//! - a PEM file (PKCS#8 or PKCS#1 RSA);
//! - a PKCS#11 URI (`pkcs11:...`, an HSM or token): signed through OpenSSL's pkcs11 engine;
//! - a signing command (`--secure-boot-sign-command`, for a KMS): cairn writes the bytes to sign on its stdin and
//!   reads the RSA PKCS#1 v1.5 SHA-256 signature from its stdout, e.g. `openssl dgst -sha256 -sign KEY`.
//!
//! Every signature is checked against the certificate before it is used, so a wrong key fails the build.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_profile::authenticode::{
    self as ac, CONTENT_TYPE_OID, MESSAGE_DIGEST_OID, RSA_OID, SHA256_OID, SPC_INDIRECT_DATA_OBJID,
};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, ObjectIdentifier, OctetString, SetOfVec};
use der::{Decode, Encode};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer as _, Verifier as _};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// `SpcPeImageData` as signers write it: no flags, and the obsolete file link `<<<Obsolete>>>`.
const SPC_PE_IMAGE_DATA: &[u8] = &[
    0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, 0x3c, 0x00, 0x3c, 0x00,
    0x3c, 0x00, 0x4f, 0x00, 0x62, 0x00, 0x73, 0x00, 0x6f, 0x00, 0x6c, 0x00, 0x65, 0x00, 0x74, 0x00,
    0x65, 0x00, 0x3e, 0x00, 0x3e, 0x00, 0x3e,
];
const SPC_PE_IMAGE_DATA_OBJID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
const SIGNED_DATA_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// `WIN_CERTIFICATE`: revision 2.0, PKCS#7 SignedData.
const WIN_CERT_REVISION: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    #[error("--secure-boot-cert is needed with --secure-boot-key or --secure-boot-sign-command")]
    NoCert,
    #[error("--secure-boot-cert needs --secure-boot-key or --secure-boot-sign-command")]
    NoKey,
    #[error("--secure-boot-key and --secure-boot-sign-command are exclusive: give one")]
    TwoKeys,
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Cert {
        path: PathBuf,
        error: ac::SignatureError,
    },
    #[error("{}: not an RSA private key in PEM (PKCS#8 or PKCS#1): {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("the key does not match {}: its signature does not verify with that certificate", cert.display())]
    WrongKey { cert: PathBuf },
    #[error("the signing command `{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error("signing {what}: {reason}")]
    Sign { what: String, reason: String },
}

impl SecureBootError {
    /// A wrong option, file or key: the user's to fix (exit 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, SecureBootError::Sign { .. })
    }
}

/// What the user gave.
#[derive(Debug, Default, Clone)]
pub struct SecureBootOptions {
    /// A PEM private key file, or a PKCS#11 URI.
    pub key: Option<String>,
    pub cert: Option<PathBuf>,
    pub sign_command: Option<String>,
    /// How the ESP offers the keys for enrollment.
    pub enroll: super::enroll::Enroll,
}

enum Key {
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Command(String),
}

/// A checked key and certificate.
pub struct Signer {
    cert: Certificate,
    cert_der: Vec<u8>,
    cert_path: PathBuf,
    key: Key,
    verifying: rsa::pkcs1v15::VerifyingKey<Sha256>,
    enroll: super::enroll::Enroll,
}

impl Signer {
    /// Checks the options, reads the certificate and key, and proves they match; `None` for an unsigned build.
    pub fn load(opts: &SecureBootOptions) -> Result<Option<Signer>, SecureBootError> {
        let (key, cert_path) = match (&opts.key, &opts.sign_command, &opts.cert) {
            (None, None, None) => return Ok(None),
            (Some(_), Some(_), _) => return Err(SecureBootError::TwoKeys),
            (None, None, Some(_)) => return Err(SecureBootError::NoKey),
            (_, _, None) => return Err(SecureBootError::NoCert),
            (Some(k), None, Some(c)) if k.starts_with("pkcs11:") => {
                (Key::Command(pkcs11_command(k)), c)
            }
            (Some(k), None, Some(c)) => (Key::Rsa(Box::new(read_key(Path::new(k))?)), c),
            (None, Some(cmd), Some(c)) => (Key::Command(cmd.clone()), c),
        };
        let bytes = std::fs::read(cert_path).map_err(|source| SecureBootError::Read {
            path: cert_path.clone(),
            source,
        })?;
        let cert_err = |error| SecureBootError::Cert {
            path: cert_path.clone(),
            error,
        };
        let cert_der = ac::certificate_der(&bytes).map_err(cert_err)?;
        let cert = Certificate::from_der(&cert_der)
            .map_err(|e| cert_err(ac::SignatureError::Certificate(e.to_string())))?;
        let public = ac::public_key(&cert).map_err(cert_err)?;
        let signer = Signer {
            cert,
            cert_der,
            cert_path: cert_path.clone(),
            key,
            verifying: rsa::pkcs1v15::VerifyingKey::new(public),
            enroll: opts.enroll,
        };
        // The key and the certificate must match before any work.
        signer.raw_sign(b"cairn: does this key match its certificate?")?;
        Ok(Some(signer))
    }

    pub fn enroll(&self) -> super::enroll::Enroll {
        self.enroll
    }

    /// The certificate, DER, as the image stores it (public).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn certificate_sha256(&self) -> String {
        ac::certificate_sha256(&self.cert_der)
    }

    /// The certificate's subject, for the report.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// An RSA PKCS#1 v1.5 SHA-256 signature of `data`, checked against the certificate.
    pub fn raw_sign(&self, data: &[u8]) -> Result<Vec<u8>, SecureBootError> {
        let sig = match &self.key {
            Key::Rsa(k) => k
                .try_sign(data)
                .map_err(|e| SecureBootError::Key {
                    path: PathBuf::from("--secure-boot-key"),
                    reason: e.to_string(),
                })?
                .to_vec(),
            Key::Command(cmd) => run_command(cmd, data)?,
        };
        let ok = rsa::pkcs1v15::Signature::try_from(sig.as_slice())
            .ok()
            .is_some_and(|s| self.verifying.verify(data, &s).is_ok());
        if !ok {
            return Err(match &self.key {
                Key::Command(command) => SecureBootError::Command {
                    command: command.clone(),
                    reason: format!(
                        "its output is not a signature that verifies with {}",
                        self.cert_path.display()
                    ),
                },
                Key::Rsa(_) => SecureBootError::WrongKey {
                    cert: self.cert_path.clone(),
                },
            });
        }
        Ok(sig)
    }

    /// `pe` with an Authenticode signature appended (its certificate table); `what` names it in errors.
    pub fn sign_pe(&self, what: &str, pe: &[u8]) -> Result<Vec<u8>, SecureBootError> {
        let fail = |reason: String| SecureBootError::Sign {
            what: what.into(),
            reason,
        };
        let mut out = pe.to_vec();
        // The certificate table starts 8-aligned; the padding is hashed as the data after the last section.
        out.resize(out.len().div_ceil(8) * 8, 0);
        // Where the security directory entry is, as the Authenticode digest skips it.
        let dir = object::read::pe::PeFile64::parse(&*out)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                authenticode::PeTrait::offsets(&f)
                    .map(|o| o.security_data_dir)
                    .map_err(|e| e.to_string())
            })
            .map_err(&fail)?;
        if out.get(dir..dir + 8) != Some(&[0u8; 8][..]) {
            return Err(fail("it is already signed".into()));
        }
        let digest = ac::digest(&out).map_err(|e| fail(e.to_string()))?;
        let der = self.authenticode(&digest).map_err(fail)?;
        let at = out.len();
        let len = 8 + der.len();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&WIN_CERT_REVISION.to_le_bytes());
        out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        out.extend_from_slice(&der);
        out.resize(out.len().div_ceil(8) * 8, 0);
        let table = (out.len() - at) as u32;
        out[dir..dir + 4].copy_from_slice(&(at as u32).to_le_bytes());
        out[dir + 4..dir + 8].copy_from_slice(&table.to_le_bytes());
        ac::verify(&out, &self.cert_der).map_err(|e| fail(e.to_string()))?;
        Ok(out)
    }

    /// The PKCS#7 ContentInfo of an Authenticode signature of `digest`.
    fn authenticode(&self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        let e = |e: der::Error| e.to_string();
        let sha256 = sha256_algorithm();
        let indirect = authenticode::SpcIndirectDataContent {
            data: authenticode::SpcAttributeTypeAndOptionalValue {
                value_type: SPC_PE_IMAGE_DATA_OBJID,
                value: Any::from_der(SPC_PE_IMAGE_DATA).map_err(e)?,
            },
            message_digest: authenticode::DigestInfo {
                digest_algorithm: sha256.clone(),
                digest: OctetString::new(digest.to_vec()).map_err(e)?,
            },
        };
        let content = Any::from_der(&indirect.to_der().map_err(e)?).map_err(e)?;
        // The message digest is over the content's value, without its SEQUENCE header (Authenticode's rule).
        let message_digest = Sha256::digest(content.value());
        let attrs: SetOfVec<Attribute> = SetOfVec::try_from(vec![
            Attribute {
                oid: CONTENT_TYPE_OID,
                values: SetOfVec::try_from(vec![
                    Any::encode_from(&SPC_INDIRECT_DATA_OBJID).map_err(e)?,
                ])
                .map_err(e)?,
            },
            Attribute {
                oid: MESSAGE_DIGEST_OID,
                values: SetOfVec::try_from(vec![
                    Any::encode_from(&OctetString::new(message_digest.to_vec()).map_err(e)?)
                        .map_err(e)?,
                ])
                .map_err(e)?,
            },
        ])
        .map_err(e)?;
        let to_sign = attrs.to_der().map_err(e)?;
        let signed = self.signed_data(
            EncapsulatedContentInfo {
                econtent_type: SPC_INDIRECT_DATA_OBJID,
                econtent: Some(content),
            },
            Some(attrs),
            &to_sign,
        )?;
        ContentInfo {
            content_type: SIGNED_DATA_OID,
            content: Any::encode_from(&signed).map_err(e)?,
        }
        .to_der()
        .map_err(e)
    }
}

impl Signer {
    /// A PKCS#7 SignedData by this signer's certificate (its only signer, SHA-256 and RSA), of `encap` with
    /// `signed_attrs`, the signature over `to_sign` (the attributes' DER, or without attributes the data itself).
    pub(super) fn signed_data(
        &self,
        encap: EncapsulatedContentInfo,
        signed_attrs: Option<SetOfVec<Attribute>>,
        to_sign: &[u8],
    ) -> Result<SignedData, String> {
        let e = |e: der::Error| e.to_string();
        let sha256 = sha256_algorithm();
        let signature = self.raw_sign(to_sign).map_err(|err| err.to_string())?;
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: self.cert.tbs_certificate.issuer.clone(),
                serial_number: self.cert.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: RSA_OID,
                parameters: Some(Any::null()),
            },
            signature: OctetString::new(signature).map_err(e)?,
            unsigned_attrs: None,
        };
        Ok(SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(e)?,
            encap_content_info: encap,
            certificates: Some(CertificateSet(
                SetOfVec::try_from(vec![CertificateChoices::Certificate(self.cert.clone())])
                    .map_err(e)?,
            )),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).map_err(e)?),
        })
    }
}

/// SHA-256 as an algorithm identifier, with the NULL parameters signers write.
fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: SHA256_OID,
        parameters: Some(Any::null()),
    }
}

fn read_key(path: &Path) -> Result<rsa::pkcs1v15::SigningKey<Sha256>, SecureBootError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecureBootError::Read {
        path: path.into(),
        source,
    })?;
    let key = rsa::PrivateKey::from_pkcs8_pem(&text)
        .or_else(|e8| rsa::PrivateKey::from_pkcs1_pem(&text).map_err(|_| e8))
        .map_err(|e| SecureBootError::Key {
            path: path.into(),
            reason: e.to_string(),
        })?;
    Ok(rsa::pkcs1v15::SigningKey::new(key))
}

/// OpenSSL with its pkcs11 engine (Debian's libengine-pkcs11-openssl) signs with the token's key.
fn pkcs11_command(uri: &str) -> String {
    format!(
        "openssl dgst -sha256 -engine pkcs11 -keyform engine -sign {}",
        shell_quote(uri)
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run_command(cmd: &str, data: &[u8]) -> Result<Vec<u8>, SecureBootError> {
    let fail = |reason: String| SecureBootError::Command {
        command: cmd.into(),
        reason,
    };
    let mut child = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let _ = writer.join();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "{}: {}",
            out.status,
            stderr.trim().lines().last().unwrap_or("")
        )));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(args: &[&str]) {
        let s = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success(), "openssl {args:?}");
    }

    /// A self-signed RSA key and certificate made with openssl, as a user would make them.
    fn key_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        (key, cert)
    }

    fn pem_signer(key: &Path, cert: &Path) -> Signer {
        Signer::load(&SecureBootOptions {
            key: Some(key.display().to_string()),
            cert: Some(cert.to_path_buf()),
            ..SecureBootOptions::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn a_signed_pe_verifies_with_its_certificate_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_and_cert(dir.path(), "db");
        let (_, other) = key_and_cert(dir.path(), "other");
        let signer = pem_signer(&key, &cert);
        let pe = cairn_profile::uki::fixture::tiny_pe();
        let signed = signer.sign_pe("stub", &pe).unwrap();
        ac::verify(&signed, signer.certificate_der()).unwrap();
        // Deterministic: the same bytes twice.
        assert_eq!(signed, signer.sign_pe("stub", &pe).unwrap());
        let other_der = ac::certificate_der(&std::fs::read(&other).unwrap()).unwrap();
        assert!(matches!(
            ac::verify(&signed, &other_der),
            Err(ac::SignatureError::OtherSigner(_))
        ));
        assert!(matches!(
            ac::verify(&pe, signer.certificate_der()),
            Err(ac::SignatureError::Unsigned)
        ));
        // One byte of a section changed: the digest no longer matches.
        let mut changed = signed.clone();
        changed[0x500] ^= 1;
        assert!(matches!(
            ac::verify(&changed, signer.certificate_der()),
            Err(ac::SignatureError::Mismatch(_))
        ));
        assert!(signer.sign_pe("signed", &signed).is_err());
        // sbsigntool's verifier (rocks/setup-host installs it) agrees.
        let f = dir.path().join("signed.efi");
        std::fs::write(&f, &signed).unwrap();
        let out = Command::new("sbverify")
            .args(["--cert", cert.to_str().unwrap(), f.to_str().unwrap()])
            .output()
            .expect("sbverify (sbsigntool)");
        assert!(
            out.status.success(),
            "sbverify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_signing_command_gives_the_same_signature_as_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_and_cert(dir.path(), "db");
        let by_key = pem_signer(&key, &cert);
        let by_command = Signer::load(&SecureBootOptions {
            key: None,
            cert: Some(cert.clone()),
            sign_command: Some(format!("openssl dgst -sha256 -sign {}", key.display())),
            ..SecureBootOptions::default()
        })
        .unwrap()
        .unwrap();
        let pe = cairn_profile::uki::fixture::tiny_pe();
        assert_eq!(
            by_key.sign_pe("stub", &pe).unwrap(),
            by_command.sign_pe("stub", &pe).unwrap()
        );
    }

    #[test]
    fn wrong_keys_and_options_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_and_cert(dir.path(), "db");
        let (other_key, _) = key_and_cert(dir.path(), "other");
        let load = |key: Option<&Path>, cert: Option<&Path>, cmd: Option<&str>| {
            Signer::load(&SecureBootOptions {
                key: key.map(|k| k.display().to_string()),
                cert: cert.map(Path::to_path_buf),
                sign_command: cmd.map(str::to_string),
                ..SecureBootOptions::default()
            })
        };
        assert!(load(None, None, None).unwrap().is_none());
        assert!(matches!(
            load(Some(&other_key), Some(&cert), None),
            Err(SecureBootError::WrongKey { .. })
        ));
        assert!(matches!(
            load(Some(&key), None, None),
            Err(SecureBootError::NoCert)
        ));
        assert!(matches!(
            load(None, Some(&cert), None),
            Err(SecureBootError::NoKey)
        ));
        assert!(matches!(
            load(Some(&key), Some(&cert), Some("true")),
            Err(SecureBootError::TwoKeys)
        ));
        assert!(matches!(
            load(Some(&cert), Some(&cert), None),
            Err(SecureBootError::Key { .. })
        ));
        assert!(matches!(
            load(Some(&key), Some(&key), None),
            Err(SecureBootError::Cert { .. })
        ));
        let e = load(None, Some(&cert), Some("echo nonsense"))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("not a signature that verifies"),
            "{e}"
        );
        let e = load(None, Some(&cert), Some("exit 3")).err().unwrap();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        assert!(
            [
                SecureBootError::NoCert,
                SecureBootError::WrongKey { cert: cert.clone() }
            ]
            .iter()
            .all(SecureBootError::is_bad_input)
        );
    }
}
