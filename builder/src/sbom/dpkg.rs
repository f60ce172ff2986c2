//! What dpkg says is installed in a root: `var/lib/dpkg/status`, and each package's license from its
//! machine-readable `usr/share/doc/NAME/copyright` where it has one.
//!
//! Both files come from a rock's layers, so they are untrusted: bounded, and read without assuming anything about
//! their shape (a stanza without a name, a field without a colon or a license nobody maps are skipped, never an
//! error). No crate parses dpkg's status file (deb822 crates aim at source packages and pull in far more).

/// A status file bigger than this is not read: the node base's is about 350 KiB, a desktop's a few MiB.
pub const MAX_STATUS: usize = 32 << 20;
/// A copyright file bigger than this is not read for its license.
pub const MAX_COPYRIGHT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The packages dpkg has `install ok installed`, sorted by name and arch.
pub fn installed(status: &[u8]) -> Vec<Installed> {
    let text = String::from_utf8_lossy(&status[..status.len().min(MAX_STATUS)]);
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let (Some(name), Some(version), Some(status)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if status != "install ok installed" || name.is_empty() || version.is_empty() {
            continue;
        }
        out.push(Installed {
            name,
            version,
            arch: field("Architecture").unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out.dedup_by(|a, b| a.name == b.name && a.arch == b.arch);
    out
}

/// The `License:` of a machine-readable copyright file's `Files: *` paragraph, as Debian writes it (`GPL-2+`).
pub fn debian_license(copyright: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&copyright[..copyright.len().min(MAX_COPYRIGHT)]);
    if !text.starts_with("Format:") {
        return None;
    }
    text.split("\n\n").find_map(|para| {
        let mut lines = para.lines();
        let files = lines.clone().find_map(|l| l.strip_prefix("Files:"))?;
        if files.split_whitespace().next() != Some("*") {
            return None;
        }
        lines
            .find_map(|l| l.strip_prefix("License:"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Debian's short license names to SPDX identifiers; `None` for one that has no exact SPDX match.
fn spdx_id(debian: &str) -> Option<&'static str> {
    let id = match debian.to_ascii_lowercase().as_str() {
        "gpl-1+" => "GPL-1.0-or-later",
        "gpl-2" => "GPL-2.0-only",
        "gpl-2+" => "GPL-2.0-or-later",
        "gpl-3" => "GPL-3.0-only",
        "gpl-3+" => "GPL-3.0-or-later",
        "lgpl-2" => "LGPL-2.0-only",
        "lgpl-2+" => "LGPL-2.0-or-later",
        "lgpl-2.1" => "LGPL-2.1-only",
        "lgpl-2.1+" => "LGPL-2.1-or-later",
        "lgpl-3" => "LGPL-3.0-only",
        "lgpl-3+" => "LGPL-3.0-or-later",
        "agpl-3" => "AGPL-3.0-only",
        "agpl-3+" => "AGPL-3.0-or-later",
        "apache-2.0" | "apache-2" => "Apache-2.0",
        "expat" | "mit" => "MIT",
        "bsd-2-clause" => "BSD-2-Clause",
        "bsd-3-clause" => "BSD-3-Clause",
        "bsd-4-clause" => "BSD-4-Clause",
        "isc" => "ISC",
        "zlib" => "Zlib",
        "mpl-1.1" => "MPL-1.1",
        "mpl-2.0" => "MPL-2.0",
        "artistic" | "artistic-1.0" => "Artistic-1.0",
        "artistic-2.0" => "Artistic-2.0",
        "cc0-1.0" | "cc0" => "CC0-1.0",
        "openssl" => "OpenSSL",
        "psf-2" | "python" => "Python-2.0",
        "curl" => "curl",
        "bsl-1.0" => "BSL-1.0",
        "unlicense" => "Unlicense",
        "ofl-1.1" => "OFL-1.1",
        "x11" => "X11",
        "gfdl-1.3+" => "GFDL-1.3-or-later",
        _ => return None,
    };
    Some(id)
}

/// A Debian license field as an SPDX expression: each name mapped, `or`/`and` kept; `None` when any part has no
/// exact match (the SBOM then says NOASSERTION and keeps Debian's words in a comment).
pub fn spdx_expression(debian: &str) -> Option<String> {
    let mut out = Vec::new();
    for word in debian.split_whitespace() {
        match word.to_ascii_lowercase().as_str() {
            "or" => out.push("OR".to_string()),
            "and" => out.push("AND".to_string()),
            other => out.push(spdx_id(other)?.to_string()),
        }
    }
    // An operator first, last or doubled is not an expression.
    let operator = |s: &String| s == "OR" || s == "AND";
    let well_formed = !out.is_empty()
        && out
            .iter()
            .enumerate()
            .all(|(i, w)| operator(w) == (i % 2 == 1))
        && out.len() % 2 == 1;
    well_formed.then(|| out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATUS: &str = "Package: bash\nEssential: yes\nStatus: install ok installed\nPriority: required\nArchitecture: amd64\nVersion: 5.2.15-2+b7\nDescription: GNU Bourne Again SHell\n Bash is an sh-compatible command language interpreter.\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\n";

    #[test]
    fn lists_what_dpkg_has_installed() {
        let got = installed(STATUS.as_bytes());
        let names: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.arch.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("bash", "5.2.15-2+b7", "amd64"),
                ("libc6", "2.36-9+deb12u4", "amd64")
            ]
        );
    }

    #[test]
    fn reads_the_main_license_of_a_machine_readable_copyright() {
        let c = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: bash\n\nFiles: *\nCopyright: 1987-2022 FSF\nLicense: GPL-3+\n\nFiles: lib/x/*\nLicense: BSD-3-clause\n\nLicense: GPL-3+\n This program is free software.\n";
        assert_eq!(debian_license(c.as_bytes()).as_deref(), Some("GPL-3+"));
        assert_eq!(
            debian_license(b"This is the Debian prepackaged version"),
            None
        );
        assert_eq!(
            spdx_expression("GPL-3+").as_deref(),
            Some("GPL-3.0-or-later")
        );
        assert_eq!(
            spdx_expression("GPL-2+ or Artistic").as_deref(),
            Some("GPL-2.0-or-later OR Artistic-1.0")
        );
        assert_eq!(spdx_expression("GPL-2+ with OpenSSL exception"), None);
        assert_eq!(spdx_expression("public-domain"), None);
        assert_eq!(spdx_expression("or"), None);
        assert_eq!(spdx_expression("MIT and"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever a rock's dpkg files hold, reading them answers, and every package it lists is installed and named.
        #[test]
        fn never_panics_and_lists_only_whole_entries(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            text in "((Package|Status|Version|Architecture|Files|License|Format): ?[ -~]{0,16}\n{1,2}){0,12}",
        ) {
            for input in [bytes.as_slice(), text.as_bytes()] {
                for p in installed(input) {
                    prop_assert!(!p.name.is_empty() && !p.version.is_empty());
                }
                if let Some(l) = debian_license(input) {
                    prop_assert!(!l.is_empty());
                    let _ = spdx_expression(&l);
                }
            }
        }
    }
}
