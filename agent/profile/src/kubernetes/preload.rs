//! `[[preload]]`: workload rocks stored in the image for an air-gapped start.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::{Checker, Rock};
use crate::reference::Reference;

/// A workload rock stored in the image for an air-gapped start.
#[derive(Debug, Clone)]
pub struct Preload {
    /// The pin (`preload[i].rock`).
    pub rock: Rock,
    /// The full reference containerd will know the image by, with its tag: `ghcr.io/canonical/coredns:1.14.6-ck0`.
    pub name: String,
}

impl Preload {
    /// The tag of [`Preload::name`] (`org.opencontainers.image.ref.name`).
    pub fn tag(&self) -> &str {
        self.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreload {
    rock: Spanned<String>,
    name: Spanned<String>,
}

impl Checker<'_> {
    pub(crate) fn preloads(&self, raw: Vec<RawPreload>) -> Result<Vec<Preload>, Error> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, p) in raw.into_iter().enumerate() {
            let rock = self.rock(&p.rock, &format!("preload[{i}].rock"))?;
            let key = format!("preload[{i}].name");
            let name = p.name.get_ref();
            let r = match Reference::parse_unpinned(name) {
                Ok(r) => r,
                Err(e) => {
                    return self.err(
                        p.name.span(),
                        &key,
                        format!("`{name}` is not an image name: {e}"),
                    );
                }
            };
            let problem = if r.digest.is_some() {
                Some(format!(
                    "`{name}` carries a digest: `name` is the name containerd will know the image by, with its tag; the pin is `rock`"
                ))
            } else if r.tag.is_none() {
                Some(format!(
                    "`{name}` has no tag: give the full name with its tag, such as ghcr.io/canonical/coredns:1.14.6-ck0"
                ))
            } else if !name.starts_with(&format!("{}/", r.registry))
                || (r.registry == crate::reference::DOCKER_HUB && !r.repository.contains('/'))
            {
                let repository = if r.repository.contains('/') {
                    r.repository.clone()
                } else {
                    format!("library/{}", r.repository)
                };
                Some(format!(
                    "`{name}` is not a full name: give it as containerd knows it, with its registry: {}/{repository}:{}",
                    r.registry,
                    r.tag.as_deref().unwrap_or("")
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return self.err(p.name.span(), &key, problem);
            }
            if !seen.insert(name.clone()) {
                return self.err(p.name.span(), &key, format!("`{name}` is preloaded twice"));
            }
            out.push(Preload {
                rock,
                name: p.name.into_inner(),
            });
        }
        Ok(out)
    }
}
