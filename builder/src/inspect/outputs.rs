//! A build's outputs, found from what the user names (`OUT/NAME`, the report, or one of the outputs) and checked
//! against the build report before anything reads them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::assemble::contents::Contents;

/// The report's suffix: `NAME.manifest.json`.
pub const REPORT_SUFFIX: &str = ".manifest.json";
/// What else a build writes beside its report, so that naming one of them names the build.
const OUTPUT_SUFFIXES: &[&str] = &[".tar", ".raw", ".qcow2", ".spdx.json"];
/// A report bigger than this is not one: the node base's is about 10 KiB, a Kubernetes node's some 30.
const MAX_REPORT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("{}: no build there: name a build's outputs by their common prefix, OUT/NAME (its report is OUT/NAME{REPORT_SUFFIX}){hint}", path.display())]
    NotFound { path: PathBuf, hint: String },
    #[error("{}: not a cairn build report: {reason}", path.display())]
    NotAReport { path: PathBuf, reason: String },
    #[error("{}: the report of the build `{name}`, not of `{asked}`", path.display())]
    OtherBuild {
        path: PathBuf,
        name: String,
        asked: String,
    },
    #[error("{}: missing: the report {} lists it", path.display(), report.display())]
    Missing { path: PathBuf, report: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what} {found} does not match the report's {expected} ({}): the file is damaged or from another build", path.display(), report.display())]
    Mismatch {
        path: PathBuf,
        report: PathBuf,
        what: &'static str,
        expected: String,
        found: String,
    },
}

impl OutputsError {
    /// A wrong path or argument (exit 2), rather than a damaged output (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            OutputsError::NotFound { .. }
                | OutputsError::NotAReport { .. }
                | OutputsError::OtherBuild { .. }
                | OutputsError::Missing { .. }
        )
    }
}

/// The build report as inspect reads it: the fields it uses (every report has them but `contents`, which older
/// builds did not record).
#[derive(Debug, Clone, Deserialize)]
pub struct BuildReport {
    pub cairn_version: String,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub profile: ProfileRef,
    #[serde(default)]
    pub source_date_epoch: u64,
    pub rocks: Vec<Rock>,
    pub outputs: Vec<OutputRef>,
    #[serde(default)]
    pub contents: Option<Contents>,
    #[serde(default)]
    pub disk: Option<DiskRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rock {
    pub key: String,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRef {
    pub format: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DiskRef {
    pub root_hash: String,
    pub kernel: String,
    pub kernel_cmdline: String,
    pub partition_table: TableRef,
    /// Reports of builds before A/B slots have neither.
    #[serde(default)]
    pub slot: Option<SlotRef>,
    #[serde(default)]
    pub boot: Option<BootRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SlotRef {
    pub root: ImageRef,
    pub verity: ImageRef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BootRef {
    /// Reports of builds before unified kernel images have neither (they carried a kernel and an initrd).
    #[serde(default)]
    pub uki_path: Option<String>,
    #[serde(default)]
    pub uki: Option<ImageRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageRef {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TableRef {
    pub disk_guid: String,
    pub size: u64,
    pub partitions: Vec<PartitionRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PartitionRef {
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
}

/// A build: its report, and the folder its outputs are in.
#[derive(Debug, Clone)]
pub struct Build {
    pub report_path: PathBuf,
    pub dir: PathBuf,
    pub report: BuildReport,
}

impl Build {
    /// Finds the build `target` names: `OUT/NAME`, `OUT/NAME.manifest.json`, or one of its outputs
    /// (`OUT/NAME.raw`...), and reads its report.
    pub fn open(target: &Path) -> Result<Build, OutputsError> {
        let text = target.as_os_str().to_string_lossy();
        let prefix = std::iter::once(REPORT_SUFFIX)
            .chain(OUTPUT_SUFFIXES.iter().copied())
            .find_map(|s| text.strip_suffix(s).filter(|_| target.is_file()))
            .unwrap_or(&text);
        let report_path = PathBuf::from(format!("{prefix}{REPORT_SUFFIX}"));
        let asked = Path::new(prefix)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = match std::fs::File::open(&report_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OutputsError::NotFound {
                    path: target.to_path_buf(),
                    hint: reports_in(target),
                });
            }
            Err(source) => {
                return Err(OutputsError::Io {
                    path: report_path,
                    source,
                });
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_REPORT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| OutputsError::Io {
                path: report_path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_REPORT {
            return Err(OutputsError::NotAReport {
                path: report_path,
                reason: format!("larger than {MAX_REPORT} bytes"),
            });
        }
        let report: BuildReport =
            serde_json::from_slice(&bytes).map_err(|e| OutputsError::NotAReport {
                path: report_path.clone(),
                reason: e.to_string(),
            })?;
        if report.name != asked {
            return Err(OutputsError::OtherBuild {
                path: report_path,
                name: report.name,
                asked,
            });
        }
        let dir = report_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Build {
            report_path,
            dir,
            report,
        })
    }

    /// The output of `format` the report lists, if any.
    pub fn output(&self, format: &str) -> Option<&OutputRef> {
        self.report.outputs.iter().find(|o| o.format == format)
    }

    /// Whether the build wrote `format`.
    pub fn has(&self, format: &str) -> bool {
        self.output(format).is_some()
    }

    /// The output's path once its size and sha256 match the report's.
    pub fn verified(&self, output: &OutputRef) -> Result<PathBuf, OutputsError> {
        let path = self.dir.join(&output.file);
        let io = |source| OutputsError::Io {
            path: path.clone(),
            source,
        };
        let mismatch = |what, expected: String, found: String| OutputsError::Mismatch {
            path: path.clone(),
            report: self.report_path.clone(),
            what,
            expected,
            found,
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OutputsError::Missing {
                    path: path.clone(),
                    report: self.report_path.clone(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        if len != output.size {
            return Err(mismatch("size", output.size.to_string(), len.to_string()));
        }
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let found = hex::encode(hash.finalize());
        if found != output.sha256 {
            return Err(mismatch("sha256", output.sha256.clone(), found));
        }
        Ok(path)
    }
}

/// For a folder given instead of a prefix: the builds it holds, as a hint.
fn reports_in(target: &Path) -> String {
    let Ok(dir) = std::fs::read_dir(target) else {
        return String::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(REPORT_SUFFIX).map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = names
        .iter()
        .map(|n| target.join(n).display().to_string())
        .collect();
    format!("; this folder holds {}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"cairn_version":"0.1.0","name":"n","version":"1","arch":"amd64",
        "profile":{"file":"n.toml","sha256":"00"},"rocks":[],
        "outputs":[{"format":"tar","file":"n.tar","size":5,"sha256":"fc4b5fd6816f75a7c81fc8eaa9499d6a299bd803397166e8c4cf9280b801d62c"}]}"#;

    fn folder() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("n.manifest.json"), REPORT).unwrap();
        std::fs::write(d.path().join("n.tar"), b"abcd\n").unwrap();
        d
    }

    #[test]
    fn names_a_build_by_prefix_report_or_output() {
        let d = folder();
        for given in ["n", "n.manifest.json", "n.tar"] {
            let b = Build::open(&d.path().join(given)).unwrap();
            assert_eq!(b.report.name, "n", "{given}");
            let tar = b.output("tar").unwrap().clone();
            assert_eq!(b.verified(&tar).unwrap(), d.path().join("n.tar"));
        }
    }

    #[test]
    fn refuses_what_is_not_this_build_naming_the_file() {
        let d = folder();
        let e = Build::open(d.path()).unwrap_err();
        assert!(e.is_bad_input());
        assert!(
            e.to_string().ends_with(&format!(
                "; this folder holds {}",
                d.path().join("n").display()
            )),
            "{e}"
        );
        std::fs::copy(
            d.path().join("n.manifest.json"),
            d.path().join("m.manifest.json"),
        )
        .unwrap();
        let e = Build::open(&d.path().join("m")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the report of the build `n`, not of `m`",
                d.path().join("m.manifest.json").display()
            )
        );
        std::fs::write(d.path().join("x.manifest.json"), "{}").unwrap();
        let e = Build::open(&d.path().join("x")).unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("not a cairn build report"));

        std::fs::write(d.path().join("n.tar"), b"abce\n").unwrap();
        let b = Build::open(&d.path().join("n")).unwrap();
        let e = b.verified(&b.report.outputs[0]).unwrap_err();
        assert!(!e.is_bad_input());
        assert!(
            e.to_string()
                .starts_with(&format!("{}: sha256 ", d.path().join("n.tar").display()))
                && e.to_string().contains("damaged or from another build"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("n.tar")).unwrap();
        let e = b.verified(&b.report.outputs[0]).unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("missing"), "{e}");
    }
}
