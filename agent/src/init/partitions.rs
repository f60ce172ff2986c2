//! Finding the boot's partitions: every disk's GPT is read (with the disk's own logical block size), and the root
//! slot is the one whose partition UUIDs derive from `cairn.verity=` (the contract's DPS convention), so that A/B
//! slots and machines with several cairn disks boot the root they were asked to. /var and the ESP are taken from
//! the root's disk.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_profile::Arch;
use cairn_profile::contract::{self, RootTypes, RootUuids};

use super::sys;
use cairn_profile::gpt::{self, GptError, Table};

/// `_IO(0x12, 104)`: the logical block size of a block device, an `int`.
const BLKSSZGET: libc::c_ulong = 0x1268;

/// The architecture this initrd runs on: only its root types are looked for.
const ARCH: Arch = if cfg!(target_arch = "aarch64") {
    Arch::Arm64
} else {
    Arch::Amd64
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Upper-case text.
    pub type_guid: String,
    /// The unique partition GUID, upper-case text.
    pub uuid: String,
    pub name: String,
    /// `/dev/vda2`.
    pub dev: PathBuf,
    /// `MAJ:MIN`.
    pub numbers: String,
    /// The whole disk's kernel name (`vda`) and the partition's number on it (1-based).
    pub disk: String,
    pub number: usize,
    /// The disk's logical block size in bytes: the unit of every LBA in its GPT.
    pub block_size: u64,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} \"{}\" type {} uuid {}",
            self.dev.display(),
            self.name,
            self.type_guid,
            self.uuid
        )
    }
}

/// What one scan of the disks found.
#[derive(Debug, Default)]
pub struct Scan {
    pub parts: Vec<Part>,
    /// Disks whose table could not be used, with why.
    pub unreadable: Vec<String>,
}

/// The partitions this boot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub root: Part,
    pub verity: Part,
    pub var: Part,
    pub esp: Option<Part>,
}

/// What a scan lacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("no root partition of type {type_guid} with UUID {uuid}")]
    Root { type_guid: String, uuid: String },
    #[error("no root verity partition of type {type_guid} with UUID {uuid}")]
    Verity { type_guid: String, uuid: String },
    #[error("no var partition (type {type_guid}) on the root's disk {disk}")]
    Var { type_guid: String, disk: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{hash:?} is not a sha256 root hash")]
    Hash { hash: String },
    #[error("{missing} after {} s (cairn.verity= names the slot); seen: [{seen}]{}", .waited.as_secs(),
        if unreadable.is_empty() { String::new() } else { format!("; unusable tables: [{unreadable}]") })]
    NotFound {
        missing: Missing,
        waited: Duration,
        seen: String,
        unreadable: String,
    },
}

/// The disk's logical block size, from the device itself.
pub(crate) fn block_size(f: &std::fs::File) -> Result<u64, GptError> {
    let mut buf = [0u8; std::mem::size_of::<libc::c_int>()];
    sys::ioctl(f.as_raw_fd(), BLKSSZGET, &mut buf)?;
    gpt::check_block_size(u64::from(u32::from_ne_bytes(buf)))
}

/// Partitions of every disk the kernel shows in /sys/block, disks in name order.
pub fn scan() -> Scan {
    let mut out = Scan::default();
    let Ok(disks) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    let mut names: Vec<String> = disks
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with("loop") || n.starts_with("ram") || n.starts_with("dm-")))
        .collect();
    names.sort();
    for name in names {
        match read_disk(&name) {
            Ok(parts) => out.parts.extend(parts),
            Err(e) => out.unreadable.push(format!("{name}: {e}")),
        }
    }
    out
}

fn read_disk(disk: &str) -> Result<Vec<Part>, GptError> {
    let mut f = std::fs::File::open(format!("/dev/{disk}"))?;
    let block = block_size(&f)?;
    let table = Table::read(&mut f, block)?;
    // Partition number → kernel device name and numbers, from sysfs.
    let mut names = BTreeMap::new();
    for e in std::fs::read_dir(format!("/sys/block/{disk}"))?.flatten() {
        let p = e.path();
        if let Ok(n) = std::fs::read_to_string(p.join("partition")) {
            let dev = std::fs::read_to_string(p.join("dev")).unwrap_or_default();
            if let Ok(n) = n.trim().parse::<usize>() {
                names.insert(
                    n,
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        dev.trim().to_string(),
                    ),
                );
            }
        }
    }
    Ok(parts_of(&table, disk, block, &names))
}

/// The table's partitions that the kernel shows (`names`: number → device name and `MAJ:MIN`).
fn parts_of(
    table: &Table,
    disk: &str,
    block: u64,
    names: &BTreeMap<usize, (String, String)>,
) -> Vec<Part> {
    table
        .parts
        .iter()
        .filter_map(|e| {
            let (dev, numbers) = names.get(&e.number)?;
            Some(Part {
                type_guid: gpt::guid_text(&e.type_guid),
                uuid: gpt::guid_text(&e.unique_guid),
                name: e.name.clone(),
                dev: PathBuf::from(format!("/dev/{dev}")),
                numbers: numbers.clone(),
                disk: disk.to_string(),
                number: e.number,
                block_size: block,
            })
        })
        .collect()
}

/// Picks the root slot whose UUIDs are `uuids` (and whose types are `types`), and /var and the ESP on its disk.
/// The hash partition is looked for on the root's disk first.
pub fn select(parts: &[Part], types: RootTypes, uuids: &RootUuids) -> Result<Found, Missing> {
    let is = |p: &Part, type_guid: &str, uuid: &str| {
        p.type_guid.eq_ignore_ascii_case(type_guid) && p.uuid.eq_ignore_ascii_case(uuid)
    };
    let root = parts
        .iter()
        .find(|p| is(p, types.root, &uuids.root))
        .ok_or_else(|| Missing::Root {
            type_guid: types.root.into(),
            uuid: uuids.root.clone(),
        })?;
    let verities: Vec<&Part> = parts
        .iter()
        .filter(|p| is(p, types.verity, &uuids.verity))
        .collect();
    let verity = verities
        .iter()
        .find(|p| p.disk == root.disk)
        .or(verities.first())
        .ok_or_else(|| Missing::Verity {
            type_guid: types.verity.into(),
            uuid: uuids.verity.clone(),
        })?;
    let on_root_disk = |type_guid: &str| {
        parts
            .iter()
            .find(|p| p.disk == root.disk && p.type_guid.eq_ignore_ascii_case(type_guid))
            .cloned()
    };
    let var = on_root_disk(contract::VAR_TYPE).ok_or_else(|| Missing::Var {
        type_guid: contract::VAR_TYPE.into(),
        disk: root.disk.clone(),
    })?;
    Ok(Found {
        root: root.clone(),
        verity: (*verity).clone(),
        var,
        esp: on_root_disk(contract::ESP_TYPE),
    })
}

/// Waits (bounded: disks appear as their drivers probe them) for the partitions of the slot `root_hash` (hex)
/// names.
pub fn wait(root_hash: &str, timeout: Duration) -> Result<Found, PartitionError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(root_hash, &mut hash).map_err(|_| PartitionError::Hash {
        hash: root_hash.into(),
    })?;
    let uuids = contract::root_uuids(&hash);
    let types = contract::root_types(ARCH);
    let started = Instant::now();
    loop {
        let scan = scan();
        let missing = match select(&scan.parts, types, &uuids) {
            Ok(found) => return Ok(found),
            Err(missing) => missing,
        };
        if started.elapsed() > timeout {
            let list = |items: Vec<String>| items.join(", ");
            return Err(PartitionError::NotFound {
                missing,
                waited: timeout,
                seen: list(scan.parts.iter().map(Part::to_string).collect()),
                unreadable: list(scan.unreadable),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(disk: &str, number: usize, type_guid: &str, uuid: &str) -> Part {
        Part {
            type_guid: type_guid.into(),
            uuid: uuid.to_ascii_uppercase(),
            name: format!("p{number}"),
            dev: PathBuf::from(format!("/dev/{disk}{number}")),
            numbers: format!("254:{number}"),
            disk: disk.into(),
            number,
            block_size: 512,
        }
    }

    const T: RootTypes = contract::root_types(Arch::Amd64);

    /// A root hash whose halves differ, as real ones do.
    fn hash(seed: u8) -> [u8; 32] {
        std::array::from_fn(|i| seed.wrapping_add(i as u8))
    }

    /// Two disks, each with an ESP, two root slots and a var: only one slot matches the hash.
    fn machine(wanted: &RootUuids, other: &RootUuids) -> Vec<Part> {
        let mut parts = Vec::new();
        for (disk, a, b) in [("vda", other, other), ("vdb", other, wanted)] {
            parts.extend([
                part(
                    disk,
                    1,
                    contract::ESP_TYPE,
                    "11111111-0000-0000-0000-000000000001",
                ),
                part(disk, 2, T.root, &a.root),
                part(disk, 3, T.verity, &a.verity),
                part(disk, 4, T.root, &b.root),
                part(disk, 5, T.verity, &b.verity),
                part(
                    disk,
                    6,
                    contract::VAR_TYPE,
                    "11111111-0000-0000-0000-000000000006",
                ),
            ]);
        }
        parts
    }

    #[test]
    fn the_slot_matching_the_hash_is_chosen_among_several() {
        let wanted = contract::root_uuids(&hash(0xab));
        let other = contract::root_uuids(&hash(0xcd));
        let found = select(&machine(&wanted, &other), T, &wanted).unwrap();
        assert_eq!(found.root.dev, PathBuf::from("/dev/vdb4"));
        assert_eq!(found.verity.dev, PathBuf::from("/dev/vdb5"));
        assert_eq!(found.var.dev, PathBuf::from("/dev/vdb6"));
        assert_eq!(found.esp.map(|p| p.dev), Some(PathBuf::from("/dev/vdb1")));
    }

    #[test]
    fn the_type_must_match_too() {
        let wanted = contract::root_uuids(&hash(0xab));
        let arm = contract::root_types(Arch::Arm64);
        let parts = vec![
            part("vda", 2, arm.root, &wanted.root),
            part("vda", 3, arm.verity, &wanted.verity),
            part(
                "vda",
                4,
                contract::VAR_TYPE,
                "11111111-0000-0000-0000-000000000006",
            ),
        ];
        assert_eq!(
            select(&parts, T, &wanted),
            Err(Missing::Root {
                type_guid: T.root.into(),
                uuid: wanted.root.clone()
            })
        );
    }

    #[test]
    fn what_is_missing_is_named() {
        let wanted = contract::root_uuids(&hash(0xab));
        let other = contract::root_uuids(&hash(0xcd));
        let parts = machine(&other, &other);
        let e = select(&parts, T, &wanted).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no root partition of type 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 with UUID {}",
                wanted.root
            )
        );
        let no_verity: Vec<Part> = machine(&wanted, &other)
            .into_iter()
            .filter(|p| p.uuid != wanted.verity.to_ascii_uppercase())
            .collect();
        assert!(matches!(
            select(&no_verity, T, &wanted),
            Err(Missing::Verity { .. })
        ));
        let no_var: Vec<Part> = machine(&wanted, &other)
            .into_iter()
            .filter(|p| !(p.disk == "vdb" && p.type_guid == contract::VAR_TYPE))
            .collect();
        assert_eq!(
            select(&no_var, T, &wanted).unwrap_err().to_string(),
            "no var partition (type 4D21B016-B534-45C2-A9FB-5C16E091FD2D) on the root's disk vdb"
        );
        let err = PartitionError::NotFound {
            missing: e,
            waited: Duration::from_secs(30),
            seen: parts[..2]
                .iter()
                .map(Part::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            unreadable: "vdc: no GPT signature".into(),
        };
        assert_eq!(
            err.to_string(),
            format!(
                "no root partition of type 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 with UUID {} after 30 s \
                 (cairn.verity= names the slot); seen: [/dev/vda1 \"p1\" type {} uuid \
                 11111111-0000-0000-0000-000000000001, /dev/vda2 \"p2\" type {} uuid {}]; unusable tables: \
                 [vdc: no GPT signature]",
                wanted.root,
                contract::ESP_TYPE,
                T.root,
                other.root.to_ascii_uppercase()
            )
        );
    }

    /// The contract end to end: a table written by sfdisk from the contract's types and UUIDs, as the builder
    /// writes it, is found again by the initrd's parser and selection. (sfdisk writes 512-byte sectors to a file
    /// whatever its script says: 4096-byte blocks are covered by the GPT tests.)
    #[test]
    fn a_table_written_by_sfdisk_is_found_by_the_contract() {
        use std::io::Write;
        let wanted = contract::root_uuids(&hash(0x3c));
        let other = contract::root_uuids(&hash(0x77));
        let block = 512u64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mib = (1 << 20) / block;
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mut script =
            format!("label: gpt\nunit: sectors\nfirst-lba: {mib}\nsector-size: {block}\n\n");
        for (i, (t, u)) in [
            (contract::ESP_TYPE, "8f6c2a3e-0000-4000-8000-000000000001"),
            (T.root, other.root.as_str()),
            (T.verity, other.verity.as_str()),
            (T.root, wanted.root.as_str()),
            (T.verity, wanted.verity.as_str()),
            (contract::VAR_TYPE, "8f6c2a3e-0000-4000-8000-000000000006"),
        ]
        .iter()
        .enumerate()
        {
            let start = (i as u64 + 1) * mib;
            script.push_str(&format!("start={start}, size={mib}, type={t}, uuid={u}\n"));
        }
        let mut child = std::process::Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (rocks/setup-host installs fdisk)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let table = Table::read(&mut std::fs::File::open(&path).unwrap(), block).unwrap();
        let names = (1..=6)
            .map(|n| (n, (format!("vda{n}"), format!("254:{n}"))))
            .collect();
        let found = select(&parts_of(&table, "vda", block, &names), T, &wanted).unwrap();
        assert_eq!(found.root.number, 4, "{block}");
        assert_eq!(found.verity.number, 5, "{block}");
        assert_eq!(found.var.number, 6, "{block}");
        assert_eq!(found.esp.map(|p| p.number), Some(1), "{block}");
        assert_eq!(found.root.block_size, block);
    }

    #[test]
    fn a_bad_hash_is_refused_before_any_scan() {
        assert!(matches!(
            wait("xyz", Duration::ZERO),
            Err(PartitionError::Hash { .. })
        ));
    }
}
