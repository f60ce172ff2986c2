//! Secure Boot key enrollment for machines in setup mode: PK, KEK and db as signed EFI variable updates
//! (`EFI_VARIABLE_AUTHENTICATION_2`, UEFI 2.10 §8.2.2), in `loader/keys/NAME/{PK,KEK,db}.auth` where systemd-boot
//! (252, `secure-boot-enroll`) finds them. Each holds the signing certificate as an `EFI_SIGNATURE_LIST`; PK signs
//! itself and KEK, KEK signs db: with one key, the image's key signs all three. Made here with the build's signer
//! (so a KMS or an HSM key works as it does for the images), timestamped with the build's epoch: deterministic.
//!
//! The risk, documented for users: enrolling makes this key the machine's platform key, so whoever holds it
//! decides what the machine boots, and the firmware stops trusting anything else (option ROMs signed by
//! Microsoft's keys among them, which some graphics and storage cards need to start).

use cms::signed_data::EncapsulatedContentInfo;
use der::Encode;
use der::asn1::ObjectIdentifier;
use sha2::{Digest, Sha256};

use cairn_profile::gpt::guid_bytes;

use super::esp::EspFile;
use super::secure_boot::{SecureBootError, Signer};

/// UEFI's global variables (PK, KEK) and the image security database (db).
const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const EFI_IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
const EFI_CERT_X509_GUID: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
const EFI_CERT_TYPE_PKCS7_GUID: &str = "4aafd29d-68df-49ee-8aa9-347d375665a7";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
const ATTRIBUTES: u32 = 0x01 | 0x02 | 0x04 | 0x20;
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

/// How systemd-boot offers the keys (loader.conf's `secure-boot-enroll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enroll {
    /// No keys on the ESP.
    Off,
    /// A menu entry, "Enroll Secure Boot keys: cairn", for a machine in setup mode (`loader/keys/cairn/`).
    #[default]
    Manual,
    /// Enrolled at once on a machine in setup mode, which then resets (`loader/keys/auto/`): for VMs and
    /// machines the user prepared, never hardware whose option ROMs need Microsoft's keys.
    Force,
}

impl Enroll {
    pub fn parse(text: &str) -> Option<Enroll> {
        match text {
            "off" => Some(Enroll::Off),
            "manual" => Some(Enroll::Manual),
            "force" => Some(Enroll::Force),
            _ => None,
        }
    }

    /// loader.conf's value.
    pub fn word(self) -> &'static str {
        match self {
            Enroll::Off => "off",
            Enroll::Manual => "manual",
            Enroll::Force => "force",
        }
    }

    /// The keys' folder on the ESP (systemd-boot enrolls the one named `auto` by itself when forced).
    pub fn keys_dir(self) -> Option<&'static str> {
        match self {
            Enroll::Off => None,
            Enroll::Manual => Some("loader/keys/cairn"),
            Enroll::Force => Some("loader/keys/auto"),
        }
    }
}

fn guid(text: &str) -> [u8; 16] {
    // The constants above are well-formed.
    guid_bytes(text).unwrap_or([0; 16])
}

/// `EFI_TIME` of a UNIX time, UTC.
fn efi_time(epoch: u64) -> [u8; 16] {
    let (y, mo, d, h, mi, s) = cairn_profile::time::civil(epoch);
    let mut t = [0u8; 16];
    t[0..2].copy_from_slice(&(y as u16).to_le_bytes());
    t[2] = mo as u8;
    t[3] = d as u8;
    t[4] = h as u8;
    t[5] = mi as u8;
    t[6] = s as u8;
    t
}

/// The signature owner cairn gives its entries: from the certificate, so the same key gives the same bytes.
fn owner(cert_der: &[u8]) -> [u8; 16] {
    let h = Sha256::digest([b"cairn secure boot owner\0".as_slice(), cert_der].concat());
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    u[7] = (u[7] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// An `EFI_SIGNATURE_LIST` with one X.509 certificate.
pub fn signature_list(cert_der: &[u8]) -> Vec<u8> {
    let size = 16 + cert_der.len();
    let mut out = Vec::with_capacity(28 + size);
    out.extend_from_slice(&guid(EFI_CERT_X509_GUID));
    out.extend_from_slice(&((28 + size) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend_from_slice(&owner(cert_der));
    out.extend_from_slice(cert_der);
    out
}

/// The signed update of variable `name` (of `vendor`) to `data`, at `epoch`.
fn authenticated(
    signer: &Signer,
    name: &str,
    vendor: &str,
    data: &[u8],
    epoch: u64,
) -> Result<Vec<u8>, SecureBootError> {
    let time = efi_time(epoch);
    let mut signed = Vec::new();
    for u in name.encode_utf16() {
        signed.extend_from_slice(&u.to_le_bytes());
    }
    signed.extend_from_slice(&guid(vendor));
    signed.extend_from_slice(&ATTRIBUTES.to_le_bytes());
    signed.extend_from_slice(&time);
    signed.extend_from_slice(data);
    let fail = |reason: String| SecureBootError::Sign {
        what: format!("{name}.auth"),
        reason,
    };
    // No ContentInfo around the SignedData, as the UEFI specification asks; the data is detached and the
    // signature over it directly (no signed attributes).
    let p7 = signer
        .signed_data(
            EncapsulatedContentInfo {
                econtent_type: ID_DATA,
                econtent: None,
            },
            None,
            &signed,
        )
        .and_then(|d| d.to_der().map_err(|e| e.to_string()))
        .map_err(fail)?;
    let mut out = Vec::with_capacity(16 + 24 + p7.len() + data.len());
    out.extend_from_slice(&time);
    out.extend_from_slice(&((24 + p7.len()) as u32).to_le_bytes());
    out.extend_from_slice(&0x0200u16.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&guid(EFI_CERT_TYPE_PKCS7_GUID));
    out.extend_from_slice(&p7);
    out.extend_from_slice(data);
    Ok(out)
}

/// The ESP's key files for `enroll` (none when off).
pub fn key_files(
    signer: &Signer,
    enroll: Enroll,
    epoch: u64,
) -> Result<Vec<EspFile>, SecureBootError> {
    let Some(dir) = enroll.keys_dir() else {
        return Ok(Vec::new());
    };
    let list = signature_list(signer.certificate_der());
    let mut files = Vec::new();
    for (name, vendor) in [
        ("PK", EFI_GLOBAL_VARIABLE),
        ("KEK", EFI_GLOBAL_VARIABLE),
        ("db", EFI_IMAGE_SECURITY_DATABASE),
    ] {
        files.push(EspFile {
            path: format!("{dir}/{name}.auth"),
            bytes: authenticated(signer, name, vendor, &list, epoch)?,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_list_holds_the_certificate() {
        let l = signature_list(b"CERT");
        assert_eq!(l.len(), 28 + 16 + 4);
        assert_eq!(&l[..16], &guid(EFI_CERT_X509_GUID));
        assert_eq!(u32::from_le_bytes(l[16..20].try_into().unwrap()), 48);
        assert_eq!(u32::from_le_bytes(l[24..28].try_into().unwrap()), 20);
        assert_eq!(&l[44..], b"CERT");
        // EFI GUIDs are mixed-endian: the x509 type's first field reversed.
        assert_eq!(&l[..4], &[0xa1, 0x59, 0xc0, 0xa5]);
        assert_eq!(efi_time(0)[..4], [0xb2, 0x07, 1, 1]);
        assert_eq!(Enroll::parse("force"), Some(Enroll::Force));
        assert_eq!(Enroll::parse("yes"), None);
        assert_eq!(Enroll::default().keys_dir(), Some("loader/keys/cairn"));
    }
}
