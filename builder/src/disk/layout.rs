//! The disk's layout: which piece goes in which partition, the slot sizes (room for slot B, for A/B updates) and
//! every partition's GUID.

use std::path::PathBuf;

use cairn_profile::{Arch, contract};

use super::gpt::{ALIGN, Partition, Table, round_up};
use super::verity::Verity;
use super::{DATA_SIZE, ESP_SIZE, Ids};

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

/// The table. Root partition GUIDs derive from the root hash ([`contract::root_uuids`]): the initrd finds the slot
/// by them. Slot B is left as free space the size of slot A. `root_len` is the root
/// image's size.
pub fn table(arch: Arch, ids: &Ids, v: &Verity, pieces: &Pieces, root_len: u64) -> Table {
    let types = contract::root_types(arch);
    let root_slot = round_up(root_len + root_len / 4, 16 * ALIGN);
    let verity_slot = round_up(v.hash_size + v.hash_size / 4, ALIGN);
    let uuids = contract::root_uuids(&v.root_hash);
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
        contract::ESP_TYPE,
        ids.uuid_string("esp"),
        ESP_SIZE,
        Some(pieces.esp.clone()),
        &mut offset,
    );
    add(
        "root-a",
        types.root,
        uuids.root,
        root_slot,
        Some(pieces.root.clone()),
        &mut offset,
    );
    add(
        "root-a-verity",
        types.verity,
        uuids.verity,
        verity_slot,
        Some(pieces.verity.clone()),
        &mut offset,
    );
    offset += root_slot + verity_slot;
    add(
        "var",
        contract::VAR_TYPE,
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
