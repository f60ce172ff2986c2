//! The ESP's boot entries, as the builder writes the first and the agent's updates write the next: one unified
//! kernel image per slot, a Boot Loader Specification Type #2 entry, `EFI/Linux/cairn-GENERATION-SLOT.efi`. Each
//! UKI carries its own kernel, initrd and command line with its own root hash ([`crate::uki`]), and is signed
//! as a whole for Secure Boot, so rolling an entry back rolls its root back too and nothing on the ESP outside a
//! signature decides what boots.
//!
//! Which one boots is systemd-boot's choice, made the way its source (systemd 252, `boot.c`) makes it:
//! - loader.conf's `default cairn-*.efi` is a glob matched against each entry's id (its lower-cased file name,
//!   boot counter included) in systemd-boot's sort order, the first match booting.
//! - That order puts an entry with no tries left (`+0-N`) last. Entries with a sort key (os-release's IMAGE_ID or
//!   ID) are ranked by it and their version; cairn's UKIs carry neither key, so they are ranked by id alone,
//!   newest first by `strverscmp`: the generation in the name decides (`cairn-10-a` before `cairn-9-b+3`),
//!   without reading the profile's own version strings (which need not sort) and without re-signing a UKI to
//!   change its version. An update's entry is written with three tries (`cairn-2-b+3.efi`); systemd-boot counts
//!   them down at each boot and systemd-bless-boot drops the counter once the boot is good.

use std::cmp::Ordering;

/// loader.conf: the glob above, no menu, no editing of the command line at boot.
pub const LOADER_CONF: &str = "default cairn-*.efi\ntimeout 0\neditor no\n";
/// loader.conf's path on the ESP.
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// The folder of the entries (Type #2: unified kernel images).
pub const ENTRIES_DIR: &str = "EFI/Linux";
/// The tries an update's entry gets.
pub const TRIES: u32 = 3;
/// The generation of a new disk's entry.
pub const FIRST_GENERATION: u64 = 1;

/// A/B: which root and hash partitions, and which entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The entry's path on the ESP: `EFI/Linux/` and [`Slot::entry_file`].
    pub fn entry_path(self, generation: u64, tries: Option<u32>) -> String {
        format!("{ENTRIES_DIR}/{}", self.entry_file(generation, tries))
    }

    /// The entry's file name: `cairn-1-a.efi`, or with tries left `cairn-2-b+3.efi`.
    pub fn entry_file(self, generation: u64, tries: Option<u32>) -> String {
        match tries {
            Some(t) => format!("cairn-{generation}-{}+{t}.efi", self.letter()),
            None => format!("cairn-{generation}-{}.efi", self.letter()),
        }
    }
}

/// What a cairn entry's file name says: `cairn-GENERATION-SLOT[+LEFT[-DONE]].efi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    pub generation: u64,
    /// `None` for an entry without a counter: blessed, or never counted.
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

fn number(t: &str) -> Option<u64> {
    (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

impl EntryName {
    /// Parses a file name (no folder); `None` for anything that is not a cairn entry. Upper-case `.EFI` is
    /// accepted, as systemd-boot matches the suffix without case.
    pub fn parse(file: &str) -> Option<EntryName> {
        let lower = file.len().checked_sub(4)?;
        if !file.is_char_boundary(lower) || !file[lower..].eq_ignore_ascii_case(".efi") {
            return None;
        }
        let stem = file[..lower].strip_prefix("cairn-")?;
        let (name, counter) = match stem.split_once('+') {
            Some((s, c)) => (s, Some(c)),
            None => (stem, None),
        };
        let (generation, slot) = name.split_once('-')?;
        let generation = number(generation)?;
        let slot = match slot {
            "a" => Slot::A,
            "b" => Slot::B,
            _ => return None,
        };
        let count = |t: &str| number(t).map(|n| n as u32);
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => match c.split_once('-') {
                Some((l, d)) => (Some(count(l)?), Some(count(d)?)),
                None => (Some(count(c)?), None),
            },
        };
        Some(EntryName {
            slot,
            generation,
            tries_left,
            tries_done,
        })
    }

    /// Out of tries: systemd-boot sorts it last, so the other entry boots.
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// One entry as systemd-boot ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub file: String,
    pub name: EntryName,
}

impl Ranked {
    pub fn parse(file: &str) -> Option<Ranked> {
        Some(Ranked {
            file: file.into(),
            name: EntryName::parse(file)?,
        })
    }

    pub fn generation(&self) -> u64 {
        self.name.generation
    }
}

/// The order systemd-boot sorts cairn's entries in (first boots): entries with tries before those without, then
/// by id newest first, which for cairn's names is the highest generation, then the slot letter descending; then
/// more tries left first, as its `config_entry_compare` breaks the last ties.
pub fn boot_order(a: &Ranked, b: &Ranked) -> Ordering {
    a.name
        .is_bad()
        .cmp(&b.name.is_bad())
        .then(b.name.generation.cmp(&a.name.generation))
        .then(b.name.slot.cmp(&a.name.slot))
        .then(b.name.tries_left.cmp(&a.name.tries_left))
}

/// The os-release a slot's UKI carries (`.osrel`): the base's, with `ID` and `IMAGE_ID` left out (so that
/// systemd-boot ranks cairn's entries by their names, above), the profile's name and version as `PRETTY_NAME`
/// (the title systemd-boot shows) and its version as `IMAGE_VERSION`.
pub fn os_release(base: &str, name: &str, version: &str) -> String {
    let mut out = String::new();
    for line in base.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        if matches!(key, "ID" | "IMAGE_ID" | "PRETTY_NAME" | "IMAGE_VERSION") {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&crate::uki::os_release_line(
        "PRETTY_NAME",
        &format!("{name} {version}"),
    ));
    out.push_str(&crate::uki::os_release_line("IMAGE_VERSION", version));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Slot::A.entry_file(1, None), "cairn-1-a.efi");
        assert_eq!(Slot::B.entry_file(2, Some(3)), "cairn-2-b+3.efi");
        assert_eq!(Slot::A.entry_path(1, None), "EFI/Linux/cairn-1-a.efi");
        assert_eq!(
            EntryName::parse("cairn-12-b+2-1.efi"),
            Some(EntryName {
                slot: Slot::B,
                generation: 12,
                tries_left: Some(2),
                tries_done: Some(1)
            })
        );
        assert_eq!(
            EntryName::parse("cairn-2-a+3.EFI").map(|n| n.tries_left),
            Some(Some(3))
        );
        assert!(EntryName::parse("cairn-2-b+0-3.efi").unwrap().is_bad());
        assert!(!EntryName::parse("cairn-1-a.efi").unwrap().is_bad());
        for not in [
            "cairn-1-c.efi",
            "cairn-a.efi",
            "cairn-1-a",
            "cairn--a.efi",
            "cairn-x-a.efi",
            "other-1-a.efi",
            "cairn-1-a+.efi",
            "cairn-1-a+x.efi",
            "cairn-1-a+1-.efi",
            "cairn-1-a+99999999999.efi",
            "cairn-9999999999-a.efi",
            "cairn-1-A.efi",
            "cairn-1-a.conf",
            "é.efi",
            "",
        ] {
            assert_eq!(EntryName::parse(not), None, "{not}");
        }
    }

    #[test]
    fn the_newest_entry_with_tries_boots_first() {
        let r = |file: &str| Ranked::parse(file).unwrap();
        let first = |mut v: Vec<Ranked>| {
            v.sort_by(boot_order);
            v[0].file.clone()
        };
        assert_eq!(
            first(vec![r("cairn-1-a.efi"), r("cairn-2-b+3.efi")]),
            "cairn-2-b+3.efi"
        );
        // Out of tries: the previous one.
        assert_eq!(
            first(vec![r("cairn-1-a.efi"), r("cairn-2-b+0-3.efi")]),
            "cairn-1-a.efi"
        );
        // Generation 10 after 9: numbers, not text, as strverscmp compares them.
        assert_eq!(
            first(vec![r("cairn-9-b.efi"), r("cairn-10-a+3.efi")]),
            "cairn-10-a+3.efi"
        );
    }

    #[test]
    fn the_os_release_drops_the_sort_keys() {
        let base = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n\nIMAGE_ID=x\n";
        let o = os_release(base, "edge", "2.0");
        assert_eq!(
            o,
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nPRETTY_NAME=\"edge 2.0\"\nIMAGE_VERSION=\"2.0\"\n"
        );
        assert_eq!(crate::uki::os_release_value(&o, "ID"), None);
    }
}
