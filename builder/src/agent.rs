//! Finding the `cairn-agent` binary to install: it must be a static ELF for the profile's arch.
//!
//! Order: `--agent PATH`, then `CAIRN_AGENT`, then `cairn-agent` beside the running `cairn`, then the workspace's
//! build folders for the musl target (the size-optimised `agent` profile, then release, then debug). A path given explicitly must be right; a candidate
//! found by searching that is dynamic or for another arch is skipped (a plain `cargo build` leaves a glibc agent
//! beside `cairn`), and the error lists what was tried.

use std::path::{Path, PathBuf};

use cairn_profile::Arch;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {}: {source}", path.display())]
    Unusable { path: PathBuf, source: Unusable },
    #[error(
        "no usable cairn-agent found; tried:\n{tried}\nbuild it with `cargo build --profile agent -p cairn-agent --target {triple}`, or pass --agent PATH (or set CAIRN_AGENT)"
    )]
    NotFound { tried: String, triple: &'static str },
}

/// Why a file cannot be the agent.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("not a 64-bit little-endian ELF file")]
    NotElf,
    #[error("built for {found}, the profile needs {need}")]
    OtherArch {
        found: &'static str,
        need: &'static str,
    },
    #[error("dynamically linked: the agent must be static (musl)")]
    Dynamic,
}

fn triple(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-unknown-linux-musl",
        Arch::Arm64 => "aarch64-unknown-linux-musl",
    }
}

/// Locates the agent for `arch`; `explicit` is `--agent`.
pub fn locate(explicit: Option<&Path>, arch: Arch) -> Result<PathBuf, AgentError> {
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("CAIRN_AGENT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = given {
        check(&path, arch).map_err(|source| AgentError::Unusable {
            path: path.clone(),
            source,
        })?;
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        candidates.push(dir.join("cairn-agent"));
    }
    let mut target_dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(t));
    }
    target_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for t in target_dirs {
        for profile in ["agent", "release", "debug"] {
            candidates.push(t.join(triple(arch)).join(profile).join("cairn-agent"));
        }
    }
    let mut tried = String::new();
    for c in candidates {
        match check(&c, arch) {
            Ok(()) => return Ok(c),
            Err(why) => tried.push_str(&format!("  {}: {why}\n", c.display())),
        }
    }
    Err(AgentError::NotFound {
        tried: tried.trim_end().to_string(),
        triple: triple(arch),
    })
}

/// A static ELF executable for `arch`, or why not.
pub fn check(path: &Path, arch: Arch) -> Result<(), Unusable> {
    let bytes = std::fs::read(path)?;
    let elf = Elf::parse(&bytes).ok_or(Unusable::NotElf)?;
    let (want, need) = match arch {
        Arch::Amd64 => (62, "amd64 (x86-64)"),
        Arch::Arm64 => (183, "arm64 (aarch64)"),
    };
    if elf.machine != want {
        let found = match elf.machine {
            62 => "amd64",
            183 => "arm64",
            _ => "another architecture",
        };
        return Err(Unusable::OtherArch { found, need });
    }
    if elf.interpreter {
        return Err(Unusable::Dynamic);
    }
    Ok(())
}

struct Elf {
    machine: u16,
    interpreter: bool,
}

impl Elf {
    fn parse(b: &[u8]) -> Option<Elf> {
        if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
            return None;
        }
        let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
        let u32_at = |o: usize| {
            b.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let u64_at = |o: usize| {
            b.get(o..o + 8)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
        };
        let machine = u16_at(18)?;
        let phoff = usize::try_from(u64_at(32)?).ok()?;
        let phentsize = usize::from(u16_at(54)?);
        let phnum = usize::from(u16_at(56)?);
        const PT_INTERP: u32 = 3;
        let interpreter = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP));
        Some(Elf {
            machine,
            interpreter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_amd64() {
        let me = std::env::current_exe().unwrap();
        let e = check(&me, Arch::Amd64).unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
        let e = check(&me, Arch::Arm64).unwrap_err().to_string();
        assert!(
            e.contains("built for amd64, the profile needs arm64"),
            "{e}"
        );
    }

    #[test]
    fn not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert_eq!(
            check(&p, Arch::Amd64).unwrap_err().to_string(),
            "not a 64-bit little-endian ELF file"
        );
        match locate(Some(&p), Arch::Amd64) {
            Err(AgentError::Unusable { source, .. }) => {
                assert!(source.to_string().contains("not a 64-bit"))
            }
            other => panic!("{other:?}"),
        }
    }
}
