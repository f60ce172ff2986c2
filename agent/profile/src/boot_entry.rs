//! The ESP's boot entries, as the builder writes the first and the agent's updates write the next: one Boot Loader
//! Specification Type #1 entry per slot, `loader/entries/cairn-a.conf` and `cairn-b.conf`, each starting its own
//! kernel and initrd (`/cairn/a/`, `/cairn/b/`) with its own root hash on the command line, so rolling an entry
//! back rolls its root back too.
//!
//! Which one boots is systemd-boot's choice, made the way its source (systemd 257, `boot.c`) makes it:
//! loader.conf's `default cairn-*.conf` is a glob, matched in systemd-boot's sort order. That order puts an entry
//! with no tries left (`NAME+0-N.conf`) last, then sorts by `sort-key` and by `version` newest first. Every cairn
//! entry has the same sort-key and, as its version, a generation number each update raises by one, so the
//! newest entry that still has tries boots, and the previous one once it has none, without reading the profile's
//! own version strings (which need not sort). An update's entry is written with three tries (`cairn-b+3.conf`);
//! systemd-boot counts them down at each boot and systemd-bless-boot drops the counter once the boot is good.

use std::cmp::Ordering;

/// loader.conf: the glob above, no menu, no editing of the command line at boot.
pub const LOADER_CONF: &str = "default cairn-*.conf\ntimeout 0\neditor no\n";
/// loader.conf's path on the ESP.
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// The folder of the entries.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Every cairn entry's `sort-key`.
pub const SORT_KEY: &str = "cairn";
/// The tries an update's entry gets.
pub const TRIES: u32 = 3;

/// A/B: which root and hash partitions, kernel and entry.
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

    /// The kernel's path on the ESP, as the entry's `linux` line names it.
    pub fn kernel(self) -> String {
        format!("/cairn/{}/vmlinuz", self.letter())
    }

    pub fn initrd(self) -> String {
        format!("/cairn/{}/initrd.img", self.letter())
    }

    /// The entry's file name: `cairn-a.conf`, or with tries left `cairn-b+3.conf`.
    pub fn entry_file(self, tries: Option<u32>) -> String {
        match tries {
            Some(t) => format!("cairn-{}+{t}.conf", self.letter()),
            None => format!("cairn-{}.conf", self.letter()),
        }
    }
}

/// An entry's text.
pub fn entry_text(slot: Slot, title: &str, generation: u64, options: &str) -> String {
    format!(
        "title {title}\nsort-key {SORT_KEY}\nversion {generation}\nlinux {}\ninitrd {}\noptions {options}\n",
        slot.kernel(),
        slot.initrd()
    )
}

/// What a cairn entry's file name says: `cairn-SLOT[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    /// `None` for an entry without a counter: blessed, or never counted.
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

impl EntryName {
    /// Parses a file name (no folder); `None` for anything that is not a cairn entry.
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(".conf")?.strip_prefix("cairn-")?;
        let (slot, counter) = match stem.split_once('+') {
            Some((s, c)) => (s, Some(c)),
            None => (stem, None),
        };
        let slot = match slot {
            "a" => Slot::A,
            "b" => Slot::B,
            _ => return None,
        };
        let number = |t: &str| -> Option<u32> {
            (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => match c.split_once('-') {
                Some((l, d)) => (Some(number(l)?), Some(number(d)?)),
                None => (Some(number(c)?), None),
            },
        };
        Some(EntryName {
            slot,
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
    /// The `version` line: the generation.
    pub generation: u64,
}

/// The order systemd-boot sorts cairn's entries in (first boots): entries with tries before those without, then
/// the highest generation, then the file name descending, as its `boot_entry_compare` breaks ties.
pub fn boot_order(a: &Ranked, b: &Ranked) -> Ordering {
    a.name
        .is_bad()
        .cmp(&b.name.is_bad())
        .then(b.generation.cmp(&a.generation))
        .then(b.file.cmp(&a.file))
}

/// The `version` line of an entry's text, as a generation (0 when absent or not a number).
pub fn generation(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.trim().split_once(char::is_whitespace)?;
            (k == "version").then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Slot::A.entry_file(None), "cairn-a.conf");
        assert_eq!(Slot::B.entry_file(Some(3)), "cairn-b+3.conf");
        assert_eq!(
            EntryName::parse("cairn-b+2-1.conf"),
            Some(EntryName {
                slot: Slot::B,
                tries_left: Some(2),
                tries_done: Some(1)
            })
        );
        assert_eq!(
            EntryName::parse("cairn-a+3.conf").map(|n| n.tries_left),
            Some(Some(3))
        );
        assert!(EntryName::parse("cairn-b+0-3.conf").unwrap().is_bad());
        assert!(!EntryName::parse("cairn-a.conf").unwrap().is_bad());
        for not in [
            "cairn-c.conf",
            "cairn-a",
            "other-a.conf",
            "cairn-a+.conf",
            "cairn-a+x.conf",
            "cairn-a+1-.conf",
            "cairn-a+99999999999.conf",
            "cairn-A.conf",
        ] {
            assert_eq!(EntryName::parse(not), None, "{not}");
        }
    }

    #[test]
    fn the_newest_entry_with_tries_boots_first() {
        let r = |file: &str, generation| Ranked {
            file: file.into(),
            name: EntryName::parse(file).unwrap(),
            generation,
        };
        let mut v = [r("cairn-a.conf", 1), r("cairn-b+3.conf", 2)];
        v.sort_by(boot_order);
        assert_eq!(v[0].file, "cairn-b+3.conf");
        // Out of tries: the previous one.
        let mut v = [r("cairn-a.conf", 1), r("cairn-b+0-3.conf", 2)];
        v.sort_by(boot_order);
        assert_eq!(v[0].file, "cairn-a.conf");
        // Generation 10 after 9: numbers, not text.
        let mut v = [r("cairn-b.conf", 9), r("cairn-a+3.conf", 10)];
        v.sort_by(boot_order);
        assert_eq!(v[0].file, "cairn-a+3.conf");
    }

    #[test]
    fn the_entry_text() {
        let t = entry_text(Slot::B, "node 2.0", 2, "console=ttyS0 cairn.verity=ab");
        assert_eq!(
            t,
            "title node 2.0\nsort-key cairn\nversion 2\nlinux /cairn/b/vmlinuz\ninitrd /cairn/b/initrd.img\noptions console=ttyS0 cairn.verity=ab\n"
        );
        assert_eq!(generation(&t), 2);
        assert_eq!(generation("title x\n"), 0);
    }
}
