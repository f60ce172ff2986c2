//! `[[snap]]`: snap files (a `.snap` and its `.assert`, as `snap download` gives them) stored in the image and
//! installed offline at first boot by the image's own snapd. This is how a node gets Canonical Kubernetes, which
//! ships only as snaps.
//!
//! Each snap is pinned by its own sha3-384 digest, written as its snap-revision assertion records it
//! (`snap-sha3-384`, 64 characters of unpadded base64url). The builder checks the file against the pin and the
//! assertion against both; snapd checks the assertion's signatures when the agent acknowledges it on the node.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::Checker;

/// A snap file named by the profile.
#[derive(Debug, Clone)]
pub struct Snap {
    /// `snap[i]`, for messages.
    pub key: String,
    /// The `.snap` file on the build host (absolute; inside the profile's folder).
    pub file: PathBuf,
    /// Its `.assert` file, unless the snap is explicitly allowed unasserted.
    pub assert: Option<PathBuf>,
    /// The pin: the snap's sha3-384 as unpadded base64url.
    pub sha3_384: String,
    /// `unasserted = true`: installed without an assertion (`snap install --dangerous`). For test snaps only:
    /// nothing vouches for such a snap but its pin.
    pub unasserted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnap {
    file: Spanned<String>,
    assert: Option<Spanned<String>>,
    #[serde(rename = "sha3-384")]
    sha3_384: Spanned<String>,
    unasserted: Option<Spanned<bool>>,
}

/// Whether `text` has the form of a snap's sha3-384 as its assertion writes it: 48 bytes in unpadded base64url.
pub fn is_sha3_384(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Checker<'_> {
    pub(crate) fn snaps(&self, raw: Vec<RawSnap>) -> Result<Vec<Snap>, Error> {
        let mut pins = BTreeSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let key = format!("snap[{i}]");
            let file = self.binary_source(&s.file, &format!("{key}.file"))?;
            let pin = s.sha3_384.get_ref();
            if !is_sha3_384(pin) {
                return self.err(
                    s.sha3_384.span(),
                    &format!("{key}.sha3-384"),
                    format!(
                        "`{pin}` is not a snap digest: give the `snap-sha3-384` of the snap's .assert file (64 characters of base64url)"
                    ),
                );
            }
            if !pins.insert(pin.clone()) {
                return self.err(
                    s.sha3_384.span(),
                    &format!("{key}.sha3-384"),
                    "this snap is named twice",
                );
            }
            let unasserted = s.unasserted.as_ref().is_some_and(|u| *u.get_ref());
            let assert = match (&s.assert, unasserted) {
                (Some(a), false) => Some(self.source(a, &format!("{key}.assert"))?),
                (None, false) => {
                    return self.err(
                        s.file.span(),
                        &format!("{key}.assert"),
                        "a snap needs its .assert file (`snap download` writes both); a test snap that has none \
                         must say `unasserted = true`",
                    );
                }
                (Some(a), true) => {
                    return self.err(
                        a.span(),
                        &format!("{key}.assert"),
                        "`unasserted = true` and an .assert file: give one or the other",
                    );
                }
                (None, true) => None,
            };
            out.push(Snap {
                key,
                file,
                assert,
                sha3_384: pin.clone(),
                unasserted,
            });
        }
        Ok(out)
    }
}

/// One snap as the builder stored it in the image, in the order the agent installs them
/// ([`crate::contract::SNAPS_PLAN`] holds the list as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSnap {
    /// The snap's name, from its `meta/snap.yaml`.
    pub name: String,
    /// The store revision its assertion gives, or `x1` for an unasserted snap (snapd numbers local installs so).
    pub revision: String,
    /// `snapd`, `base`, `os`, `core` or `app`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute paths in the image.
    pub file: String,
    pub assert: Option<String>,
    /// Installed with `--classic`: its snap.yaml says `confinement: classic`.
    pub classic: bool,
    pub sha3_384: String,
}
