//! The disk's layout: which piece goes in which partition, the slot sizes (room for slot B, for A/B updates) and
//! every partition's GUID.

use std::path::PathBuf;

use cairn_profile::{Arch, SlotSize, contract};

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

/// The GPT name of a slot's partitions until an update writes them (systemd-sysupdate's convention).
pub const EMPTY_NAME: &str = "_empty";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{label}: a slot of {slot} bytes cannot hold this root of {root} bytes (its verity tree {tree}, {verity_slot} in the slot): make it bigger, or leave it out (the default is the root's size and a quarter)"
    )]
    SlotTooSmall {
        label: String,
        slot: u64,
        verity_slot: u64,
        root: u64,
        tree: u64,
    },
}

/// Slot sizes: a root slot, and its verity slot, which holds the hash tree of a root filling the root slot (a
/// SHA-256 tree of 4 KiB blocks is about 1/127 of the data, its superblock and rounding a little more).
fn slot_sizes(root_len: u64, slot: Option<&SlotSize>) -> (u64, u64) {
    let root_slot = match slot {
        Some(s) => s.bytes,
        None => round_up(root_len + root_len / 4, 16 * ALIGN),
    };
    (root_slot, verity_slot(root_slot))
}

fn verity_slot(root_slot: u64) -> u64 {
    round_up(root_slot / 127 + 64 * 1024, ALIGN)
}

/// The table: the ESP, slot A (root-a and root-a-verity, holding this build), slot B (the same types and sizes,
/// named [`EMPTY_NAME`] until an update writes it), then /var, last so that it can grow to the disk's end. Slot
/// A's partition GUIDs derive from the root hash ([`contract::root_uuids`]): the initrd finds the slot by them.
/// `root_len` is the root image's size; `slot` is `image.slot-size`.
pub fn table(
    arch: Arch,
    ids: &Ids,
    v: &Verity,
    pieces: &Pieces,
    root_len: u64,
    slot: Option<&SlotSize>,
) -> Result<Table, LayoutError> {
    let types = contract::root_types(arch);
    let (root_slot, verity_slot) = slot_sizes(root_len, slot);
    if root_len > root_slot || v.hash_size > verity_slot {
        return Err(LayoutError::SlotTooSmall {
            label: slot
                .map(|s| s.label.clone())
                .unwrap_or_else(|| "image.slot-size".into()),
            slot: root_slot,
            verity_slot,
            root: root_len,
            tree: v.hash_size,
        });
    }
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
    add(
        EMPTY_NAME,
        types.root,
        ids.uuid_string("root-b"),
        root_slot,
        None,
        &mut offset,
    );
    add(
        EMPTY_NAME,
        types.verity,
        ids.uuid_string("root-b-verity"),
        verity_slot,
        None,
        &mut offset,
    );
    add(
        "var",
        contract::VAR_TYPE,
        ids.uuid_string("var"),
        DATA_SIZE,
        Some(pieces.data.clone()),
        &mut offset,
    );
    // The backup GPT takes the last 33 sectors: keep a whole MiB.
    Ok(Table {
        disk_guid: ids.uuid_string("disk"),
        size: offset + ALIGN,
        partitions,
    })
}
