//! One-time secrets on the ESP: once the node has joined, the join token and the cluster's encryption key are
//! cut out of the ESP's instance file, every other byte kept.

use std::fs;
use std::path::Path;

use cairn_profile::Instance;
use sha2::{Digest, Sha256};

use crate::datasources::{Found, SourceKind};
use crate::engine::StepError;
use crate::state::State;
use crate::target::Target;

/// Removes `join-token` from the ESP's instance file once the node has joined, keeping every other byte; the
/// agent's record of that file follows, so the next boot does not see "instance changed".
pub(super) fn forget_token(
    found: &Found,
    state: &mut State,
    target: &Target,
) -> Result<String, StepError> {
    let path = Path::new(&found.name);
    let Some(text) = without_secrets(&found.text) else {
        return Ok(format!(
            "; the join token could not be cut out of {} by line: remove it by hand",
            path.display()
        ));
    };
    // Only a rewrite the agent can read back, with no token and nothing else lost, is written.
    match Instance::parse(&found.name, &text) {
        Ok(i) if i.kubernetes.join_token.is_none() && i.kubernetes.encryption_key.is_none() => {}
        _ => {
            return Ok(format!(
                "; the join token was left in {}: remove it by hand",
                path.display()
            ));
        }
    }
    let tmp = path.with_extension("toml.cairn-tmp");
    fs::write(&tmp, &text)
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StepError::refused(format!(
                "removing the join token from {}: {e}",
                path.display()
            ))
        })?;
    let old = hex::encode(Sha256::digest(found.text.as_bytes()));
    let new = hex::encode(Sha256::digest(text.as_bytes()));
    for record in state.instance.values_mut() {
        if record.source == SourceKind::Esp.as_str() && record.sha256 == old {
            record.sha256 = new.clone();
        }
    }
    state.save(target).map_err(StepError::State)?;
    Ok(format!("; join secrets removed from {}", path.display()))
}

/// The secrets a node needs once, to join: cut out of the ESP's instance file once it has joined.
const ONE_TIME_SECRETS: &[&str] = &["join-token", "encryption-key"];

/// The instance text without its `[kubernetes]` `join-token = ...` and `encryption-key = ...` lines; `None`
/// when there is no such line.
pub(super) fn without_secrets(text: &str) -> Option<String> {
    let mut table = String::new();
    let mut out = String::with_capacity(text.len());
    let mut removed = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            table = t
                .trim_end()
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        } else if table == "kubernetes" {
            let key = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if ONE_TIME_SECRETS.contains(&key) && t.contains('=') {
                removed = true;
                continue;
            }
        }
        out.push_str(line);
    }
    removed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_token_line_alone_is_cut() {
        let text = "# node 7\n[system]\nhostname = \"n7\"\n\n[kubernetes]\nrole = \"worker\"\njoin-token = \"abc\" # from cp\nnode-name = \"n7\"\n";
        assert_eq!(
            without_secrets(text).unwrap(),
            "# node 7\n[system]\nhostname = \"n7\"\n\n[kubernetes]\nrole = \"worker\"\nnode-name = \"n7\"\n"
        );
        // Not in [kubernetes]: not touched.
        assert!(without_secrets("[system]\njoin-token = \"x\"\n").is_none());
        assert!(without_secrets("[kubernetes]\nrole = \"worker\"\n").is_none());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    /// Instance-file lines: table headers (ours and others, spaced or quoted oddly), secret lines, other keys,
    /// comments and junk, each ended by `\n`, `\r\n` or nothing (the last line).
    fn line() -> impl Strategy<Value = String> {
        let body = prop_oneof![
            "[ \t]{0,2}\\[[ ]?(kubernetes|system|kubernetes\\.x|k8s)[ ]?\\][ \t]{0,2}(# c)?",
            "[ \t]{0,2}\"?(join-token|encryption-key)\"?[ ]?=[ ]?\"[a-z0-9.]{0,8}\"( # c)?",
            "[ \t]{0,2}(role|node-name|join-token-x|token)[ ]?=[ ]?\"[a-z]{0,6}\"",
            "[ \t]{0,2}#.{0,10}",
            ".{0,16}",
        ];
        (body, prop::sample::select(vec!["\n", "\r\n"])).prop_map(|(b, end)| {
            // A generated body with a newline inside is split there: keep each line whole.
            b.replace('\n', " ") + end
        })
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Whatever the file holds, the rewrite is the file with whole secret lines of `[kubernetes]` removed
        /// and every other line kept byte for byte, in order; `None` exactly when nothing was removed.
        #[test]
        fn only_whole_secret_lines_of_kubernetes_are_cut(
            lines in prop::collection::vec(line(), 0..12),
            last in ".{0,12}",
            text in any::<String>(),
        ) {
            let _ = without_secrets(&text);
            let mut file = lines.concat();
            file.push_str(&last);
            let Some(out) = without_secrets(&file) else {
                prop_assert!(!secret_lines(&file).iter().any(|&s| s));
                return Ok(());
            };
            let kept: Vec<&str> = out.split_inclusive('\n').collect();
            let all: Vec<&str> = file.split_inclusive('\n').collect();
            let secret = secret_lines(&file);
            let want: Vec<&str> = all.iter().zip(&secret).filter(|(_, s)| !**s).map(|(l, _)| *l).collect();
            prop_assert!(secret.iter().any(|&s| s));
            prop_assert_eq!(kept, want);
        }
    }

    /// Which lines are a one-time secret of `[kubernetes]`, read independently: the last table header before a
    /// line decides its table.
    fn secret_lines(file: &str) -> Vec<bool> {
        let mut in_kubernetes = false;
        file.split_inclusive('\n')
            .map(|line| {
                let t = line.trim();
                if let Some(header) = t.strip_prefix('[') {
                    in_kubernetes = header.split(']').next().map(str::trim) == Some("kubernetes");
                    return false;
                }
                let Some((key, _)) = t.split_once('=') else {
                    return false;
                };
                let key = key.trim().trim_matches('"');
                in_kubernetes && (key == "join-token" || key == "encryption-key")
            })
            .collect()
    }
}
