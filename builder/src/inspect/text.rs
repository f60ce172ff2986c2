//! The human renderings of an [`Inspection`] and a [`Diff`]: sizes in binary units, digests shortened to 12 hex
//! digits (the JSON has them whole).

use std::fmt::Write as _;

use super::diff::{Diff, FileChange, PartitionChange, RockChange};
use super::listing::Entry;
use super::{Inspection, outputs::Rock};
use crate::cache::maintain::human;

/// The first 12 hex digits of a digest (`sha256:HEX` or bare hex), keeping the algorithm.
pub fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest[..digest.len().min(12)].to_string(),
    }
}

/// A reference with its digest shortened.
fn short_ref(reference: &str) -> String {
    match reference.rsplit_once('@') {
        Some((name, digest)) => format!("{name}@{}", short(digest)),
        None => reference.to_string(),
    }
}

fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Rows as columns, each as wide as its widest cell; the columns in `right` are right-aligned.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>], right: &[usize]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = width[c].saturating_sub(cell.chars().count());
            if right.contains(&c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else if c + 1 < r.len() {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

pub fn inspection(i: &Inspection) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {} ({}), built by cairn {} from {} (sha256 {})",
        i.name,
        i.version,
        i.arch,
        i.cairn_version,
        i.profile.file,
        short(&i.profile.sha256)
    );
    let _ = writeln!(o, "report: {}", i.report.display());
    for r in &i.read {
        let _ = writeln!(
            o,
            "read: {} (sha256 {}, as the report says)",
            r.file.display(),
            short(&r.sha256)
        );
    }

    o.push_str("\noutputs\n");
    let rows: Vec<Vec<String>> = i
        .outputs
        .iter()
        .map(|x| {
            vec![
                x.format.clone(),
                x.file.clone(),
                human(x.size),
                format!("sha256 {}", short(&x.sha256)),
            ]
        })
        .collect();
    table(&mut o, "  ", &rows, &[2]);

    o.push_str("\nrocks\n");
    for r in &i.rocks {
        rock(&mut o, r);
    }

    if let Some(c) = &i.contents {
        o.push_str("\ncontents by origin (regular files, after whiteouts)\n");
        let mut rows = Vec::new();
        for origin in &c.origins {
            rows.push(vec![
                origin.origin.clone(),
                count(origin.amount.files, "file"),
                human(origin.amount.bytes),
            ]);
            for l in &origin.layers {
                rows.push(vec![
                    format!("  layer {}", short(&l.digest)),
                    count(l.amount.files, "file"),
                    human(l.amount.bytes),
                ]);
            }
        }
        rows.push(vec![
            "total".into(),
            count(c.total.files, "file"),
            human(c.total.bytes),
        ]);
        table(&mut o, "  ", &rows, &[1, 2]);
        o.push_str("\nbiggest files\n");
        let rows: Vec<Vec<String>> = c
            .biggest
            .iter()
            .map(|b| vec![human(b.size), b.path.clone(), format!("({})", b.origin)])
            .collect();
        table(&mut o, "  ", &rows, &[0]);
    }

    if let Some(p) = &i.packages {
        let _ = writeln!(
            o,
            "\npackages: {}, from dpkg's status in {}",
            p.list.len(),
            p.from.display()
        );
        let rows: Vec<Vec<String>> = p
            .list
            .iter()
            .map(|p| vec![p.name.clone(), p.version.clone(), p.arch.clone()])
            .collect();
        table(&mut o, "  ", &rows, &[]);
    }

    if let Some(d) = &i.disk {
        let t = &d.partition_table;
        let _ = writeln!(
            o,
            "\npartitions (the GPT of {}: {}, disk {})",
            d.from.display(),
            human(t.size),
            t.disk_guid
        );
        let mut rows = vec![vec![
            "#".to_string(),
            "name".into(),
            "type".into(),
            "offset".into(),
            "size".into(),
            "uuid".into(),
        ]];
        for p in &t.partitions {
            rows.push(vec![
                p.number.to_string(),
                p.name.clone(),
                p.type_name
                    .map(str::to_string)
                    .unwrap_or_else(|| p.type_guid.clone()),
                human(p.offset),
                human(p.size),
                p.uuid.clone(),
            ]);
        }
        table(&mut o, "  ", &rows, &[0, 3, 4]);
        let b = &d.boot;
        let _ = writeln!(o, "\nboot ({})", b.default);
        for e in &b.entries {
            let _ = writeln!(
                o,
                "  entry:     {}, {}, {}, {}",
                e.file,
                e.title,
                human(e.size),
                if e.signed { "signed" } else { "unsigned" }
            );
        }
        let version = b
            .kernel
            .version
            .as_deref()
            .map(|v| format!(": {v}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  kernel:    {}, {}, sha256 {}{version}",
            b.kernel.path,
            human(b.kernel.size),
            short(&b.kernel.sha256)
        );
        let _ = writeln!(o, "  cmdline:   {}", b.kernel_cmdline);
        if let Some(h) = &b.root_hash {
            let _ = writeln!(o, "  root hash: {}", short(h));
        }
    }

    if !i.notes.is_empty() {
        o.push_str("\nnotes\n");
        for n in &i.notes {
            let _ = writeln!(o, "  {n}");
        }
    }
    o
}

fn rock(o: &mut String, r: &Rock) {
    let _ = writeln!(o, "  {}  {}", r.key, short_ref(&r.reference));
    let mut digests = format!("manifest {}", short(&r.manifest_digest));
    if let Some(i) = &r.index_digest {
        let _ = write!(digests, ", index {}", short(i));
    }
    let _ = writeln!(o, "    {digests}, config {}", short(&r.config_digest));
    for l in &r.layers {
        let _ = writeln!(o, "    layer {}  {}", short(&l.digest), human(l.size));
    }
}

fn entry(e: &Entry) -> String {
    let mut s = format!("{} {:04o} {}:{}", e.kind.name(), e.mode, e.uid, e.gid);
    if e.kind == super::listing::Kind::File {
        let _ = write!(s, " {}", human(e.size));
    }
    if let Some(t) = &e.target {
        let _ = write!(s, " -> {t}");
    }
    s
}

fn file_change(c: &FileChange) -> String {
    let parts: Vec<String> = c
        .what
        .iter()
        .map(|w| match *w {
            "kind" => format!("kind {} -> {}", c.a.kind.name(), c.b.kind.name()),
            "mode" => format!("mode {:04o} -> {:04o}", c.a.mode, c.b.mode),
            "owner" => format!("owner {}:{} -> {}:{}", c.a.uid, c.a.gid, c.b.uid, c.b.gid),
            "size" => format!("size {} -> {}", human(c.a.size), human(c.b.size)),
            "target" => format!(
                "target {} -> {}",
                c.a.target.as_deref().unwrap_or("-"),
                c.b.target.as_deref().unwrap_or("-")
            ),
            other => other.to_string(),
        })
        .collect();
    parts.join(", ")
}

fn rock_change(c: &RockChange) -> String {
    match (&c.a, &c.b) {
        (Some(a), Some(b)) => format!(
            "~ {}  {} -> {}",
            c.key,
            short(&a.manifest_digest),
            short(&b.manifest_digest)
        ),
        (Some(a), None) => format!("- {}  {}", c.key, short_ref(&a.reference)),
        (None, Some(b)) => format!("+ {}  {}", c.key, short_ref(&b.reference)),
        (None, None) => format!("? {}", c.key),
    }
}

fn partition_change(c: &PartitionChange) -> String {
    let desc = |p: &super::gpt::Partition| {
        format!(
            "{} {}",
            p.type_name
                .map(str::to_string)
                .unwrap_or_else(|| p.type_guid.clone()),
            human(p.size)
        )
    };
    match (&c.a, &c.b) {
        (Some(a), Some(b)) => {
            let parts: Vec<String> = c
                .what
                .iter()
                .map(|w| match *w {
                    "size" => format!("size {} -> {}", human(a.size), human(b.size)),
                    "name" => format!("name {} -> {}", a.name, b.name),
                    _ => format!(
                        "type {} -> {}",
                        a.type_name.unwrap_or(&a.type_guid),
                        b.type_name.unwrap_or(&b.type_guid)
                    ),
                })
                .collect();
            format!("~ {}  {}", c.name, parts.join(", "))
        }
        (Some(a), None) => format!("- {}  {}", c.name, desc(a)),
        (None, Some(b)) => format!("+ {}  {}", c.name, desc(b)),
        (None, None) => format!("? {}", c.name),
    }
}

pub fn diff(d: &Diff) -> String {
    let mut o = String::new();
    for (tag, s) in [("a", &d.a), ("b", &d.b)] {
        let from = s
            .files_from
            .as_ref()
            .map(|f| format!(", files from {}", f.display()))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "{tag}: {} ({} {}){from}",
            s.report.display(),
            s.name,
            s.version
        );
    }
    if !d.rocks.is_empty() {
        o.push_str("\nrocks\n");
        for c in &d.rocks {
            let _ = writeln!(o, "  {}", rock_change(c));
        }
    }
    let f = &d.files;
    if !(f.added.is_empty() && f.removed.is_empty() && f.changed.is_empty()) {
        let how = if f.contents_compared {
            "contents compared"
        } else {
            "kinds, modes, owners, sizes and links compared; contents only under /var, from the factory archive"
        };
        let _ = writeln!(o, "\nfiles ({how})");
        let mut rows = Vec::new();
        for p in &f.added {
            rows.push(vec!["+".to_string(), p.path.clone(), entry(&p.entry)]);
        }
        for p in &f.removed {
            rows.push(vec!["-".to_string(), p.path.clone(), entry(&p.entry)]);
        }
        for c in &f.changed {
            rows.push(vec!["~".to_string(), c.path.clone(), file_change(c)]);
        }
        rows.sort_by(|a, b| a[1].cmp(&b[1]));
        table(&mut o, "  ", &rows, &[]);
    }
    let p = &d.packages;
    if !(p.added.is_empty() && p.removed.is_empty() && p.changed.is_empty()) {
        o.push_str("\npackages\n");
        let mut rows = Vec::new();
        for x in &p.added {
            rows.push(vec![
                "+".into(),
                x.name.clone(),
                x.arch.clone(),
                x.version.clone(),
            ]);
        }
        for x in &p.removed {
            rows.push(vec![
                "-".into(),
                x.name.clone(),
                x.arch.clone(),
                x.version.clone(),
            ]);
        }
        for x in &p.changed {
            rows.push(vec![
                "~".into(),
                x.name.clone(),
                x.arch.clone(),
                format!("{} -> {}", x.a, x.b),
            ]);
        }
        rows.sort_by(|a, b| (&a[1], &a[2]).cmp(&(&b[1], &b[2])));
        table(&mut o, "  ", &rows, &[]);
    }
    if !d.partitions.is_empty() {
        o.push_str("\npartitions\n");
        for c in &d.partitions {
            let _ = writeln!(o, "  {}", partition_change(c));
        }
    }
    if !d.notes.is_empty() {
        o.push_str("\nnotes\n");
        for n in &d.notes {
            let _ = writeln!(o, "  {n}");
        }
    }
    if d.same() {
        o.push_str("\nno differences\n");
    } else {
        let files = (f.added.len() + f.removed.len() + f.changed.len()) as u64;
        let packages = (p.added.len() + p.removed.len() + p.changed.len()) as u64;
        let _ = writeln!(
            o,
            "\ndiffer: {}, {}, {}, {}",
            count(d.rocks.len() as u64, "rock"),
            count(files, "file"),
            count(packages, "package"),
            count(d.partitions.len() as u64, "partition")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_digests_and_references() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(short(&format!("sha256:{hex}")), "sha256:0123456789ab");
        assert_eq!(short(&hex), "0123456789ab");
        assert_eq!(
            short_ref(&format!("localhost:5000/r:t@sha256:{hex}")),
            "localhost:5000/r:t@sha256:0123456789ab"
        );
    }

    #[test]
    fn lines_up_columns() {
        let mut o = String::new();
        let rows = vec![
            vec!["a".to_string(), "1 B".to_string(), "x".to_string()],
            vec!["long".to_string(), "10 KiB".to_string(), "y".to_string()],
        ];
        table(&mut o, "  ", &rows, &[1]);
        assert_eq!(o, "  a        1 B  x\n  long  10 KiB  y\n");
    }
}
