//! How the command line tells its results: plain text (a table on a terminal) or one JSON message per result and
//! per error on stdout (`--message-format json`, as cargo does: each message has a `reason`).

use std::io::IsTerminal;
use std::path::Path;

use cairn::build::Built;
use cairn::cache::maintain::human;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

/// Where results go: stdout, as text or as JSON.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// One result: its text, or its JSON message (`reason` first).
    pub fn result(&self, reason: &str, text: impl FnOnce() -> String, fields: Value) {
        if self.json {
            println!("{}", message(reason, fields));
        } else {
            print!("{}", text());
        }
    }
}

/// `{"reason": REASON, ...fields}`.
pub fn message(reason: &str, fields: Value) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("reason".into(), Value::String(reason.into()));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

/// What `cairn build` ends with. Off a terminal: `SHA256  PATH` per output (as sha256sum prints them, so
/// `sha256sum -c` can check them) and the report's path. On a terminal: a table with sizes, the root hash and what
/// to run next.
pub fn built(built: &Built, out: &Path) -> String {
    if std::io::stdout().is_terminal() {
        table(built, out)
    } else {
        plain(built, out)
    }
}

fn plain(built: &Built, out: &Path) -> String {
    let mut s = String::new();
    for o in &built.report.outputs {
        s.push_str(&format!("{}  {}\n", o.sha256, out.join(&o.file).display()));
    }
    s.push_str(&format!("report: {}\n", built.report_path.display()));
    s
}

fn table(built: &Built, out: &Path) -> String {
    let rows: Vec<(String, String, &str)> = built
        .report
        .outputs
        .iter()
        .map(|o| {
            (
                out.join(&o.file).display().to_string(),
                human(o.size),
                o.sha256.as_str(),
            )
        })
        .collect();
    let width = rows
        .iter()
        .map(|r| r.0.chars().count())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut s = format!("\n{:<width$}  {:>10}  sha256\n", "output", "size");
    for (path, size, sha) in &rows {
        s.push_str(&format!("{path:<width$}  {size:>10}  {sha}\n"));
    }
    s.push_str(&format!("report: {}\n", built.report_path.display()));
    if let Some(disk) = &built.report.disk {
        s.push_str(&format!("\nroot hash  {}\n", disk.root_hash));
    }
    s.push_str("\nnext:\n");
    for line in next_steps(built, out) {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

/// What a user runs after a build: boot or write the disk, or look inside.
fn next_steps(built: &Built, out: &Path) -> Vec<String> {
    let name = &built.report.name;
    let mut next = Vec::new();
    let has = |format: &str| built.report.outputs.iter().any(|o| o.format == format);
    if has("raw") || has("qcow2") {
        next.push(format!(
            "cairn boot {}   # boot it under QEMU until the node says ready",
            out.join(name).display()
        ));
    }
    if has("raw") {
        let raw = out.join(format!("{name}.raw"));
        next.push(format!(
            "qemu-system-x86_64 -machine q35 -m 2048 -nographic -bios /usr/share/ovmf/OVMF.fd -drive if=virtio,format=raw,file={}",
            raw.display()
        ));
        next.push(format!(
            "dd if={} of=/dev/DISK bs=4M conv=fsync   # write it to a machine's disk",
            raw.display()
        ));
    } else if has("qcow2") {
        next.push(format!(
            "qemu-system-x86_64 -machine q35 -m 2048 -nographic -bios /usr/share/ovmf/OVMF.fd -drive if=virtio,format=qcow2,file={}",
            out.join(format!("{name}.qcow2")).display()
        ));
    }
    next.push(format!("cairn inspect {}", out.join(name).display()));
    next
}

/// What `cairn boot` says on stdout: the verdict, and for a ready node what it booted.
pub fn booted(b: &cairn::boot::Booted) -> String {
    let mut s = format!(
        "{}: {} after {:.1} s",
        b.outcome.name(),
        b.disk.display(),
        b.seconds
    );
    let field = |pointer: &str| {
        b.status
            .as_ref()
            .and_then(|s| s.pointer(pointer))
            .and_then(Value::as_str)
    };
    let mut about = Vec::new();
    if let Some(profile) = field("/image/profile") {
        let version = field("/image/version").unwrap_or_default();
        about.push(format!("{profile} {version}").trim_end().to_string());
    }
    if let Some(hash) = field("/image/root_hash") {
        about.push(format!("root hash {}", cairn::progress::short(hash)));
    }
    if let Some(instance) = field("/instance") {
        about.push(format!("instance {instance}"));
    }
    if !about.is_empty() {
        s.push_str(&format!(" ({})", about.join(", ")));
    }
    s.push('\n');
    if let Some(note) = &b.note {
        s.push_str(&format!("  {note}\n"));
    }
    if let Some(c) = &b.console {
        s.push_str(&format!("console: {}\n", c.display()));
    }
    s
}

/// The JSON message of a finished build.
pub fn built_json(built: &Built, out: &Path) -> Value {
    json!({
        "name": built.report.name,
        "version": built.report.version,
        "outputs": built.report.outputs.iter().map(|o| json!({
            "format": o.format,
            "path": out.join(&o.file),
            "size": o.size,
            "sha256": o.sha256,
        })).collect::<Vec<_>>(),
        "root_hash": built.report.disk.as_ref().map(|d| d.root_hash.clone()),
        "report": built.report_path,
        "used_network": built.used_network,
    })
}

/// What `cairn push` prints on stdout: `REF@sha256:DIGEST`, alone, so `$(cairn push ...)` is the reference.
pub fn pushed(p: &cairn::push::Pushed) -> String {
    format!("{}\n", p.reference)
}

/// Its parts and sizes, for stderr.
pub fn pushed_parts(p: &cairn::push::Pushed) -> String {
    let mut s = format!(
        "{} {} (root hash {}), tag {}:\n",
        p.name,
        p.version,
        cairn::progress::short(&p.root_hash),
        p.tag
    );
    for part in &p.parts {
        s.push_str(&format!(
            "  {:<7} {:>10}  {}  {}\n",
            part.part,
            human(part.size),
            cairn::progress::short(&part.digest),
            if part.sent { "sent" } else { "already there" }
        ));
    }
    s.push_str(&format!(
        "  {:<7} {:>10}  sent {} in {:.1} s\n",
        "total",
        human(p.bytes),
        human(p.sent),
        p.seconds
    ));
    s
}
