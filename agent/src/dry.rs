//! Dry runs (`apply --dry-run`): a step applied to a dry [`Target`](crate::target::Target) records each write it
//! would make, given what the root holds, instead of making it; this module keeps that record and says what it
//! means, one line a change: `write /etc/hostname: node-1 (now: localhost)`.
//!
//! Contents are shown only for files whose content is no secret: the hostname and machine id as values, and
//! line diffs of `/etc/hosts`, the account databases (the password field of shadow and gshadow masked) and
//! `authorized_keys`. Any other file (instance files, the Kubernetes presets' key file) is shown by size, mode
//! and owner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::target::Owner;

/// One change a dry target would have made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file written: new, or with other content. `old`: its content and owner now.
    Write {
        path: String,
        old: Option<(Vec<u8>, Owner)>,
        new: Vec<u8>,
        owner: Owner,
    },
    /// A file or folder that stays, with another mode or owner.
    Owner {
        path: String,
        old: Owner,
        new: Owner,
    },
    MakeDir {
        path: String,
        owner: Owner,
    },
    Symlink {
        path: String,
        to: String,
        /// What is there now: a link's target, `a file` or none.
        old: Option<String>,
    },
    Remove {
        path: String,
    },
    Copy {
        path: String,
        from: PathBuf,
        bytes: u64,
    },
    /// A change said in words by the step (the running system's hostname, a machine id to be made).
    Said(String),
}

/// What a path is in the dry run so far, once a change touched it.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    File(Vec<u8>, Owner),
    Dir(Owner),
    Link(String),
    Gone,
}

/// The changes a dry target recorded, and what each path it touched would be: later reads see earlier writes.
#[derive(Debug, Default)]
pub(crate) struct Record {
    changes: Vec<Change>,
    pending: BTreeMap<PathBuf, Pending>,
}

/// A record shared by a dry target and its clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared(Arc<Mutex<Record>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        // A poisoned lock only means a panic elsewhere: the record itself is still whole.
        let mut record = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut record)
    }

    pub(crate) fn pending(&self, host: &Path) -> Option<Pending> {
        self.with(|r| r.pending.get(host).cloned())
    }

    pub(crate) fn record(&self, change: Change, host: Option<(PathBuf, Pending)>) {
        self.with(|r| {
            r.changes.push(change);
            if let Some((path, p)) = host {
                r.pending.insert(path, p);
            }
        })
    }

    /// The changes recorded since the last call.
    pub(crate) fn take(&self) -> Vec<Change> {
        self.with(|r| std::mem::take(&mut r.changes))
    }
}

/// Files whose one line is shown as a value.
const VALUE_FILES: &[&str] = &["/etc/hostname", "/etc/machine-id"];
/// Files shown as line diffs.
const LINE_FILES: &[&str] = &[
    "/etc/hosts",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
];
/// Line files whose second field is a password hash.
const MASKED: &[&str] = &["/etc/shadow", "/etc/gshadow"];
/// Beyond this many lines on either side, a line diff is only counted (it costs their product in memory).
const MAX_DIFF_LINES: usize = 2000;

impl Change {
    /// The change in words: one line, or a few for a line diff.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Change::Write {
                path,
                old,
                new,
                owner,
            } => write_lines(path, old.as_ref(), new, *owner),
            Change::Owner { path, old, new } => {
                vec![format!(
                    "set {path} to {} (now: {})",
                    owner(*new),
                    owner(*old)
                )]
            }
            Change::MakeDir { path, owner: o } => {
                vec![format!("make folder {path}, {}", owner(*o))]
            }
            Change::Symlink { path, to, old } => vec![format!(
                "link {path} -> {to} (now: {})",
                old.as_deref().unwrap_or("absent")
            )],
            Change::Remove { path } => vec![format!("remove {path}")],
            Change::Copy { path, from, bytes } => {
                vec![format!("copy {} to {path} ({bytes} bytes)", from.display())]
            }
            Change::Said(text) => vec![text.clone()],
        }
    }
}

fn owner(o: Owner) -> String {
    format!("mode {:04o}, owner {}:{}", o.mode, o.uid, o.gid)
}

fn write_lines(path: &str, old: Option<&(Vec<u8>, Owner)>, new: &[u8], o: Owner) -> Vec<String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if VALUE_FILES.contains(&path) {
        let now = match old {
            None => "absent".to_string(),
            Some((b, _)) if b.iter().all(u8::is_ascii_whitespace) => "empty".to_string(),
            Some((b, _)) => text(b).trim().escape_debug().to_string(),
        };
        return vec![format!(
            "write {path}: {} (now: {now})",
            text(new).trim().escape_debug()
        )];
    }
    let lines_file = LINE_FILES.contains(&path) || path.ends_with("/.ssh/authorized_keys");
    if !lines_file {
        let now = match old {
            None => "absent".to_string(),
            Some((b, was)) if *was == o => format!("{} bytes, other content", b.len()),
            Some((b, was)) => format!("{} bytes, other content, {}", b.len(), owner(*was)),
        };
        return vec![format!(
            "write {path}: {} bytes, {} (now: {now})",
            new.len(),
            owner(o)
        )];
    }
    let mask = MASKED.contains(&path);
    let shown = |b: &[u8]| -> Vec<String> {
        text(b)
            .lines()
            .map(|l| if mask { mask_hash(l) } else { l.to_string() })
            .collect()
    };
    let mut out = Vec::new();
    let before = match old {
        None => {
            out.push(format!("write {path}, {} (now: absent)", owner(o)));
            Vec::new()
        }
        Some((b, was)) => {
            if *was != o {
                out.push(format!("set {path} to {} (now: {})", owner(o), owner(*was)));
            }
            shown(b)
        }
    };
    let after = shown(new);
    match line_diff(&before, &after) {
        Some(edits) => out.extend(edits.into_iter().map(|e| format!("{path}: {e}"))),
        None => out.push(format!("{path}: its {} lines rewritten", after.len())),
    }
    out
}

/// The password field of a shadow or gshadow line, masked unless it only says "no password" or "locked".
fn mask_hash(line: &str) -> String {
    let mut fields: Vec<&str> = line.split(':').collect();
    if let Some(f) = fields.get_mut(1)
        && (f.len() > 2 || f.contains('$'))
    {
        *f = "<hash>";
    }
    fields.join(":")
}

/// The edits from `a` to `b`, by longest common subsequence: `add "L"`, `remove "L"`, or `"A" becomes "B"` for
/// a line removed where one is added. None when the files are too long to compare.
fn line_diff(a: &[String], b: &[String]) -> Option<Vec<String>> {
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return None;
    }
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut removed: Vec<&str> = Vec::new();
    let mut added: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let flush = |removed: &mut Vec<&str>, added: &mut Vec<&str>, out: &mut Vec<String>| {
        let paired = removed.len().min(added.len());
        for k in 0..paired {
            out.push(format!("{:?} becomes {:?}", removed[k], added[k]));
        }
        out.extend(removed[paired..].iter().map(|l| format!("remove {l:?}")));
        out.extend(added[paired..].iter().map(|l| format!("add {l:?}")));
        removed.clear();
        added.clear();
    };
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            flush(&mut removed, &mut added, &mut out);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
            added.push(&b[j]);
            j += 1;
        } else {
            removed.push(&a[i]);
            i += 1;
        }
    }
    flush(&mut removed, &mut added, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_line_diff_pairs_a_changed_line_and_lists_the_rest() {
        let a = lines(&["root:x:0:", "sudo:x:27:", "shadow:x:42:"]);
        let b = lines(&["root:x:0:", "sudo:x:27:ops", "shadow:x:42:", "ops:x:1000:"]);
        assert_eq!(
            line_diff(&a, &b).unwrap(),
            [
                r#""sudo:x:27:" becomes "sudo:x:27:ops""#,
                r#"add "ops:x:1000:""#
            ]
        );
        assert_eq!(line_diff(&b, &b).unwrap(), Vec::<String>::new());
        assert_eq!(line_diff(&b, &a[..1]).unwrap().len(), 3);
        let long = vec![String::new(); MAX_DIFF_LINES + 1];
        assert_eq!(line_diff(&long, &a), None);
    }

    #[test]
    fn values_are_shown_and_other_files_only_measured() {
        let root = Owner::ROOT_0644;
        let hostname = Change::Write {
            path: "/etc/hostname".into(),
            old: Some((b"localhost\n".to_vec(), root)),
            new: b"node-1\n".to_vec(),
            owner: root,
        };
        assert_eq!(
            hostname.lines(),
            ["write /etc/hostname: node-1 (now: localhost)"]
        );
        let secret = Change::Write {
            path: "/etc/app/token".into(),
            old: None,
            new: b"s3cret\n".to_vec(),
            owner: Owner {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        };
        let said = secret.lines().join("\n");
        assert_eq!(
            said,
            "write /etc/app/token: 7 bytes, mode 0600, owner 0:0 (now: absent)"
        );
        let shadow = Change::Write {
            path: "/etc/shadow".into(),
            old: Some((b"root:$6$salt$hash:19000::::::\n".to_vec(), root)),
            new: b"root:$6$salt$hash:19000::::::\nops:!:::::::\n".to_vec(),
            owner: root,
        };
        assert_eq!(shadow.lines(), [r#"/etc/shadow: add "ops:!:::::::""#]);
        assert_eq!(mask_hash("root:$6$salt$hash:1::"), "root:<hash>:1::");
        assert_eq!(mask_hash("sudo:*::ops"), "sudo:*::ops");
    }
}
