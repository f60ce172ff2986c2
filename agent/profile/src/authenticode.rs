//! Authenticode, the PE signatures UEFI Secure Boot checks: what the builder signs systemd-boot and each UKI with,
//! and what the agent checks an update's UKI against before it may boot (the running image's certificate, so an
//! update signed by any other key is refused before the firmware would refuse it).
//!
//! The PE digest and the signature's structures come from Google's `authenticode` crate; the signature itself is
//! RSA PKCS#1 v1.5 over SHA-256 (what every UEFI firmware checks), with RustCrypto's `rsa`. Only what the firmware
//! needs is accepted: one signer, identified by issuer and serial number, SHA-256 throughout, signed attributes
//! with the message digest of the encapsulated `SpcIndirectDataContent`.

use authenticode::{AttributeCertificateIterator, AuthenticodeSignature};
use cms::cert::IssuerAndSerialNumber;
use cms::signed_data::SignerIdentifier;
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use object::read::pe::PeFile64;
use rsa::PublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::signature::Verifier;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

/// SHA-256.
pub const SHA256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// rsaEncryption, as a signer info's signature algorithm.
pub const RSA_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// sha256WithRSAEncryption, which some signers name instead.
pub const RSA_SHA256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// The signed attributes a signer info must carry.
pub const CONTENT_TYPE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
pub const MESSAGE_DIGEST_OID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
pub use authenticode::SPC_INDIRECT_DATA_OBJID;

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a PE32+ image ({0})")]
    NotPe(String),
    #[error("not signed")]
    Unsigned,
    #[error("its signature cannot be read: {0}")]
    Malformed(String),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("it is signed by another key ({0})")]
    OtherSigner(String),
    #[error("its signature does not match its contents: {0}")]
    Mismatch(&'static str),
}

/// The Authenticode SHA-256 digest of a PE image: every byte but its checksum, its certificate table entry and
/// the certificate table, in the order the specification gives.
pub fn digest(pe: &[u8]) -> Result<[u8; 32], SignatureError> {
    digest_of(&parse(pe)?)
}

fn parse(pe: &[u8]) -> Result<PeFile64<'_>, SignatureError> {
    PeFile64::parse(pe).map_err(|e| SignatureError::NotPe(e.to_string()))
}

fn digest_of(file: &PeFile64<'_>) -> Result<[u8; 32], SignatureError> {
    let mut h = Hasher(Sha256::new());
    authenticode::authenticode_digest(file, &mut h)
        .map_err(|e| SignatureError::NotPe(e.to_string()))?;
    Ok(h.0.finalize().into())
}

/// sha256 over `bytes` with the `digest` 0.10 trait the authenticode crate takes.
struct Hasher(Sha256);

impl digest010::Update for Hasher {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// Whether `pe` has a certificate table (signed by someone; [`verify`] says by whom).
pub fn is_signed(pe: &[u8]) -> bool {
    PeFile64::parse(pe).is_ok_and(|f| has_certificate_table(&f))
}

/// Whether a parsed PE's security directory names a certificate table.
pub fn has_certificate_table(file: &PeFile64<'_>) -> bool {
    file.data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY)
        .is_some_and(|d| d.size.get(object::LittleEndian) != 0)
}

/// A certificate's fingerprint: sha256 of its DER, lower-case hex.
pub fn certificate_sha256(cert_der: &[u8]) -> String {
    hex(&Sha256::digest(cert_der))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate in PEM (`-----BEGIN CERTIFICATE-----`) or DER, as DER.
pub fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let cert = if bytes.starts_with(b"-----") {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SignatureError::Certificate("PEM that is not text".into()))?;
        Certificate::load_pem_chain(text.as_bytes())
            .map_err(|e| SignatureError::Certificate(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| SignatureError::Certificate("no certificate in the PEM".into()))?
    } else {
        Certificate::from_der(bytes).map_err(|e| SignatureError::Certificate(e.to_string()))?
    };
    public_key(&cert)?;
    cert.to_der()
        .map_err(|e| SignatureError::Certificate(e.to_string()))
}

/// The certificate's RSA key: Secure Boot's db signers are RSA.
pub fn public_key(cert: &Certificate) -> Result<PublicKey, SignatureError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != RSA_OID {
        return Err(SignatureError::Certificate(format!(
            "its key is {}, not RSA (UEFI firmware checks RSA signatures)",
            spki.algorithm.oid
        )));
    }
    PublicKey::from_pkcs1_der(spki.subject_public_key.raw_bytes())
        .map_err(|e| SignatureError::Certificate(e.to_string()))
}

/// Checks that `pe` carries an Authenticode signature by `cert_der`'s key that covers every byte the firmware
/// checks.
pub fn verify(pe: &[u8], cert_der: &[u8]) -> Result<(), SignatureError> {
    let cert =
        Certificate::from_der(cert_der).map_err(|e| SignatureError::Certificate(e.to_string()))?;
    let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public_key(&cert)?);
    let file = parse(pe)?;
    let certs = AttributeCertificateIterator::new(&file)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?
        .ok_or(SignatureError::Unsigned)?;
    let computed = digest_of(&file)?;
    let mut last = SignatureError::Unsigned;
    for c in certs {
        let c = c.map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let sig = match c.get_authenticode_signature() {
            Ok(s) => s,
            Err(e) => {
                last = SignatureError::Malformed(e.to_string());
                continue;
            }
        };
        match check_one(&sig, &cert, &key, &computed) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check_one(
    sig: &AuthenticodeSignature,
    cert: &Certificate,
    key: &rsa::pkcs1v15::VerifyingKey<Sha256>,
    computed: &[u8; 32],
) -> Result<(), SignatureError> {
    let info = sig.signer_info();
    let ours = IssuerAndSerialNumber {
        issuer: cert.tbs_certificate.issuer.clone(),
        serial_number: cert.tbs_certificate.serial_number.clone(),
    };
    match &info.sid {
        SignerIdentifier::IssuerAndSerialNumber(id) if *id == ours => {}
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            return Err(SignatureError::OtherSigner(format!(
                "issuer {}, serial {}",
                id.issuer,
                hex(id.serial_number.as_bytes())
            )));
        }
        SignerIdentifier::SubjectKeyIdentifier(_) => {
            return Err(SignatureError::OtherSigner(
                "a signer named by key identifier".into(),
            ));
        }
    }
    if sig.digest_algorithm().oid != SHA256_OID || info.digest_alg.oid != SHA256_OID {
        return Err(SignatureError::Mismatch("it is not SHA-256"));
    }
    if sig.digest() != computed {
        return Err(SignatureError::Mismatch(
            "the image's digest is not the one signed",
        ));
    }
    if info.signature_algorithm.oid != RSA_OID && info.signature_algorithm.oid != RSA_SHA256_OID {
        return Err(SignatureError::Mismatch("its signature is not RSA"));
    }
    let attrs = info
        .signed_attrs
        .as_ref()
        .ok_or(SignatureError::Mismatch("it has no signed attributes"))?;
    let content = sig
        .encapsulated_content()
        .ok_or(SignatureError::Mismatch("it has no signed content"))?;
    let attr = |oid| attrs.iter().find(|a| a.oid == oid);
    let message_digest = attr(MESSAGE_DIGEST_OID)
        .and_then(|a| a.values.get(0))
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .ok_or(SignatureError::Mismatch("it has no message digest"))?;
    if message_digest.as_bytes() != Sha256::digest(content).as_slice() {
        return Err(SignatureError::Mismatch(
            "its message digest is not its content's",
        ));
    }
    let content_type = attr(CONTENT_TYPE_OID)
        .and_then(|a| a.values.get(0))
        .and_then(|v| v.decode_as::<ObjectIdentifier>().ok());
    if content_type != Some(SPC_INDIRECT_DATA_OBJID) {
        return Err(SignatureError::Mismatch(
            "its content type is not SpcIndirectDataContent",
        ));
    }
    let signed = attrs
        .to_der()
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let signature = rsa::pkcs1v15::Signature::try_from(sig.signature())
        .map_err(|_| SignatureError::Mismatch("its RSA signature cannot be read"))?;
    key.verify(&signed, &signature)
        .map_err(|_| SignatureError::Mismatch("its RSA signature does not verify"))
}
