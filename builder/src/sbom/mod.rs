//! The software bill of materials of every build: `NAME.spdx.json`, an SPDX 2.3 JSON document of what the image is
//! made of. It lists each rock merged into the root and each preloaded one with its digest, each snap with its
//! sha3-384, each Debian package dpkg has installed (name, version, arch, a `pkg:deb` purl, the license where its
//! copyright file says it in a form SPDX knows), and cairn's own files with their checksums.
//!
//! Written from the assembled tree, with nothing from the clock: the same inputs give the same bytes.

pub mod dpkg;

use std::path::PathBuf;

use cairn_profile::{Profile, contract};
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::assemble::tree::Tree;
use crate::filesystem::{self, FilesystemError};
use crate::preload::ResolvedPreload;
use crate::resolve::ResolvedRock;
use crate::snaps::SnapReport;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("the SBOM: {0}")]
    Read(#[from] FilesystemError),
}

/// What the document describes.
pub struct Inputs<'a> {
    pub profile: &'a Profile,
    pub rocks: &'a [ResolvedRock],
    pub preloads: &'a [ResolvedPreload],
    pub snaps: &'a [SnapReport],
    pub epoch: u64,
}

/// cairn's own files that a root may have: its agent, the baked profile, the snaps' plan, its units and snapd's.
fn cairn_files() -> Vec<String> {
    [
        contract::AGENT_IN_ROOT,
        contract::BAKED_PROFILE_IN_ROOT,
        contract::SNAPS_PLAN_IN_ROOT,
        crate::snaps::SNAP_MOUNT_PATH,
        crate::snaps::APPARMOR_HOME_PATH,
    ]
    .into_iter()
    .map(String::from)
    .chain(crate::files::unit_paths())
    .collect()
}

/// SPDX identifiers take letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{i}-{clean}")
}

/// A purl's version and qualifier values: everything but unreserved characters percent-encoded.
fn purl_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The document, as bytes (pretty JSON and a final newline).
pub fn document(tree: &Tree, tars: &[PathBuf], inputs: &Inputs<'_>) -> Result<Vec<u8>, SbomError> {
    let p = inputs.profile;
    let image_id = "SPDXRef-Image";
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": p.name,
        "versionInfo": p.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("The root filesystem cairn built from profile {}", p.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
    })];
    let mut contained = Vec::new();
    let oci = |id: String, key: &str, reference: &cairn_profile::Reference, digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        let last = reference
            .repository
            .rsplit('/')
            .next()
            .unwrap_or(&reference.repository);
        json!({
            "SPDXID": id,
            "name": format!("{}/{}", reference.registry, reference.repository),
            "versionInfo": reference.tag.clone().unwrap_or_else(|| digest.to_string()),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "checksums": [{"algorithm": "SHA256", "checksumValue": hex}],
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:oci/{last}@{}?repository_url={}",
                    purl_encode(digest),
                    purl_encode(&format!("{}/{}", reference.registry, reference.repository))
                ),
            }],
            "primaryPackagePurpose": "CONTAINER",
            "comment": format!("profile key {key}"),
        })
    };
    for (i, r) in inputs.rocks.iter().enumerate() {
        let id = spdx_id("Rock", i, &r.key);
        let pinned = r.index_digest.as_ref().unwrap_or(&r.manifest_digest);
        packages.push(oci(id.clone(), &r.key, &r.reference, pinned.as_str()));
        contained.push(id);
    }
    for (i, pre) in inputs.preloads.iter().enumerate() {
        let id = spdx_id("Preload", i, &pre.name);
        let r = &pre.rock;
        let pinned = r.index_digest.as_ref().unwrap_or(&r.manifest_digest);
        packages.push(oci(id.clone(), &r.key, &r.reference, pinned.as_str()));
        contained.push(id);
    }
    for (i, s) in inputs.snaps.iter().enumerate() {
        let id = spdx_id("Snap", i, &s.name);
        let sha3 = base64_url_to_hex(&s.sha3_384);
        let mut pkg = json!({
            "SPDXID": id,
            "name": s.name,
            "versionInfo": format!("{} (revision {})", s.version, s.revision),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "primaryPackagePurpose": "APPLICATION",
            "comment": format!("profile key {}; {} snap, {} confinement, {}", s.key, s.kind, s.confinement,
                if s.asserted { "asserted" } else { "unasserted (allowed by the profile)" }),
        });
        if let Some(hex) = sha3 {
            pkg["checksums"] = json!([{"algorithm": "SHA3-384", "checksumValue": hex}]);
        }
        packages.push(pkg);
        contained.push(id);
    }
    let status = filesystem::read_file(tree, tars, "var/lib/dpkg/status")?.unwrap_or_default();
    for (i, deb) in dpkg::installed(&status).iter().enumerate() {
        let id = spdx_id("Deb", i, &deb.name);
        let copyright =
            filesystem::read_file(tree, tars, &format!("usr/share/doc/{}/copyright", deb.name))
                .ok()
                .flatten();
        let debian = copyright.as_deref().and_then(dpkg::debian_license);
        let spdx = debian.as_deref().and_then(dpkg::spdx_expression);
        let mut purl = format!(
            "pkg:deb/debian/{}@{}",
            purl_encode(&deb.name),
            purl_encode(&deb.version)
        );
        if !deb.arch.is_empty() {
            purl.push_str(&format!("?arch={}", purl_encode(&deb.arch)));
        }
        let mut pkg = json!({
            "SPDXID": id,
            "name": deb.name,
            "versionInfo": deb.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": spdx.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }],
        });
        if let (Some(d), None) = (&debian, &spdx) {
            pkg["licenseComments"] = json!(format!("Debian's copyright file says: {d}"));
        }
        packages.push(pkg);
        contained.push(id);
    }
    // cairn's own files, in a package of their own: SPDX lets only a package whose files were analysed contain
    // files, with the verification code over their SHA1s.
    let mut files = Vec::new();
    let mut file_ids = Vec::new();
    let mut sha1s = Vec::new();
    for (i, path) in cairn_files().iter().enumerate() {
        let Some(bytes) = filesystem::read_file(tree, tars, path)? else {
            continue;
        };
        let id = spdx_id("File", i, path.rsplit('/').next().unwrap_or(path));
        let sha1 = hex::encode(Sha1::digest(&bytes));
        files.push(json!({
            "SPDXID": id,
            "fileName": format!("./{path}"),
            "checksums": [
                {"algorithm": "SHA1", "checksumValue": sha1},
                {"algorithm": "SHA256", "checksumValue": hex::encode(Sha256::digest(&bytes))},
            ],
            "licenseConcluded": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        }));
        sha1s.push(sha1);
        file_ids.push(id);
    }
    sha1s.sort();
    let cairn_id = "SPDXRef-Cairn";
    packages.push(json!({
        "SPDXID": cairn_id,
        "name": "cairn",
        "versionInfo": env!("CARGO_PKG_VERSION"),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": true,
        "packageVerificationCode": {
            "packageVerificationCodeValue": hex::encode(Sha1::digest(sha1s.concat().as_bytes())),
        },
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": "the files cairn writes into the image: its agent, the baked profile, its units",
    }));
    contained.push(cairn_id.to_string());
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let contains = |from: &str, to: &str| {
        json!({
            "spdxElementId": from,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": to,
        })
    };
    relationships.extend(contained.iter().map(|id| contains(image_id, id)));
    relationships.extend(file_ids.iter().map(|id| contains(cairn_id, id)));
    // Unique per distinct content, and the same for the same inputs.
    let mut identity = Sha256::new();
    identity.update(crate::report::profile_sha256(p).as_bytes());
    for r in inputs.rocks {
        identity.update(r.manifest_digest.as_str().as_bytes());
    }
    identity.update(&status);
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", p.name, p.version),
        "documentNamespace": format!(
            "https://cairn.invalid/spdx/{}/{}/{}",
            purl_encode(&p.name),
            purl_encode(&p.version),
            hex::encode(identity.finalize())
        ),
        "creationInfo": {
            "created": cairn_profile::time::rfc3339(inputs.epoch),
            "creators": [format!("Tool: cairn-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "files": files,
        "relationships": relationships,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    Ok(bytes)
}

fn base64_url_to_hex(text: &str) -> Option<String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .map(hex::encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_purls_take_only_what_their_grammar_allows() {
        assert_eq!(spdx_id("Deb", 3, "libstdc++6"), "SPDXRef-Deb-3-libstdc--6");
        assert_eq!(purl_encode("1:2.36-9+deb12u4"), "1%3A2.36-9%2Bdeb12u4");
        assert_eq!(purl_encode("sha256:ab"), "sha256%3Aab");
    }
}
