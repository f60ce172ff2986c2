//! The disk's layout: which piece goes in which partition, the slot sizes (room for slot B, for A/B updates) and
//! every partition's GUID.

use std::path::PathBuf;

use cairn_profile::Arch;

use super::gpt::{self, ALIGN, Partition, Table, round_up};
use super::verity::Verity;
use super::{DATA_SIZE, ESP_SIZE, Ids, format_uuid};

/// The partitions' contents, made in a work folder.
pub struct Pieces {
    pub esp: PathBuf,
    pub root: PathBuf,
    pub verity: PathBuf,
    pub data: PathBuf,
}

impl Pieces {
    pub fn in_folder(work: &std::path::Path) -> Pieces {
        Pieces {
            esp: work.join("esp.fat"),
            root: work.join("root.squashfs"),
            verity: work.join("root.verity"),
            data: work.join("var.ext4"),
        }
    }
}

/// The table. Root partition GUIDs follow the DPS convention: the root's is the first half of the root hash, the
/// hash partition's the second half. Slot B is left as free space the size of slot A. `root_len` is the root
/// image's size.
pub fn table(arch: Arch, ids: &Ids, v: &Verity, pieces: &Pieces, root_len: u64) -> Table {
    let (root_type, verity_type) = match arch {
        Arch::Amd64 => (gpt::ROOT_X86_64, gpt::ROOT_VERITY_X86_64),
        Arch::Arm64 => (gpt::ROOT_ARM64, gpt::ROOT_VERITY_ARM64),
    };
    let root_slot = round_up(root_len + root_len / 4, 16 * ALIGN);
    let verity_slot = round_up(v.hash_size + v.hash_size / 4, ALIGN);
    let mut half = [0u8; 16];
    half.copy_from_slice(&v.root_hash[..16]);
    let root_uuid = format_uuid(&half);
    half.copy_from_slice(&v.root_hash[16..]);
    let verity_uuid = format_uuid(&half);
    let mut offset = ALIGN;
    let mut partitions = Vec::new();
    let mut add = |name: &str,
                   type_guid: &str,
                   uuid: String,
                   size: u64,
                   content: Option<PathBuf>,
                   offset: &mut u64| {
        partitions.push(Partition {
            name: name.into(),
            type_guid: type_guid.into(),
            uuid,
            offset: *offset,
            size,
            content,
        });
        *offset += size;
    };
    add(
        "esp",
        gpt::ESP_TYPE,
        ids.uuid_string("esp"),
        ESP_SIZE,
        Some(pieces.esp.clone()),
        &mut offset,
    );
    add(
        "root-a",
        root_type,
        root_uuid,
        root_slot,
        Some(pieces.root.clone()),
        &mut offset,
    );
    add(
        "root-a-verity",
        verity_type,
        verity_uuid,
        verity_slot,
        Some(pieces.verity.clone()),
        &mut offset,
    );
    offset += root_slot + verity_slot;
    add(
        "var",
        gpt::VAR_TYPE,
        ids.uuid_string("var"),
        DATA_SIZE,
        Some(pieces.data.clone()),
        &mut offset,
    );
    // The backup GPT takes the last 33 sectors: keep a whole MiB.
    Table {
        disk_guid: ids.uuid_string("disk"),
        size: offset + ALIGN,
        partitions,
    }
}
