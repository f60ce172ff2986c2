//! The builder–agent contract: what the image the builder writes and the agent (and the initrd, which is the same
//! binary) read back must agree on, kept in one place: the GPT partition types, how the root partitions' UUIDs
//! derive from the root hash, cairn's paths in the image and the kernel command-line keys cairn owns.

use crate::Arch;

/// The EFI system partition: systemd-boot and each slot's unified kernel image; instance data may sit there.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The verified root (squashfs) on amd64.
pub const ROOT_TYPE_AMD64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The root's dm-verity hash partition on amd64.
pub const ROOT_VERITY_TYPE_AMD64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
/// The verified root (squashfs) on arm64.
pub const ROOT_TYPE_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
/// The root's dm-verity hash partition on arm64.
pub const ROOT_VERITY_TYPE_ARM64: &str = "DF3300CE-D69F-4C92-978C-9BFB0F38D820";
/// The data partition (ext4) the initrd mounts on /var.
pub const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// The type GUIDs of a root slot's two partitions for one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootTypes {
    pub root: &'static str,
    pub verity: &'static str,
}

/// The partition types of the root and its hash partition on `arch` (Discoverable Partitions Specification).
pub const fn root_types(arch: Arch) -> RootTypes {
    match arch {
        Arch::Amd64 => RootTypes {
            root: ROOT_TYPE_AMD64,
            verity: ROOT_VERITY_TYPE_AMD64,
        },
        Arch::Arm64 => RootTypes {
            root: ROOT_TYPE_ARM64,
            verity: ROOT_VERITY_TYPE_ARM64,
        },
    }
}

/// The unique partition UUIDs of a root slot, lower-case text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootUuids {
    pub root: String,
    pub verity: String,
}

/// The UUIDs a root slot's partitions carry, from the slot's root hash (systemd's Discoverable Partitions
/// convention): the root's is the hash's first 128 bits, the hash partition's its last 128 bits. The initrd picks
/// the slot whose UUIDs match `cairn.verity=`, so A/B slots and several cairn disks in one machine never mix.
pub fn root_uuids(root_hash: &[u8; 32]) -> RootUuids {
    let (first, last) = root_hash.split_at(16);
    RootUuids {
        root: uuid_text(first),
        verity: uuid_text(last),
    }
}

/// 16 bytes as UUID text, `8-4-4-4-12` lower-case hex digits in byte order (as `sfdisk` takes it).
fn uuid_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One path on a node, declared once and given twice: absolute (as the agent opens it) and relative to the
/// image's root (as the builder's tree takes it).
macro_rules! node_path {
    ($(#[$doc:meta])* $abs:ident, $rel:ident = $path:expr) => {
        $(#[$doc])*
        pub const $abs: &str = concat!("/", $path);
        #[doc = concat!("`/", $path, "` relative to the image's root.")]
        pub const $rel: &str = $path;
    };
}

/// A path under cairn's own folder in the root.
macro_rules! lib {
    ($name:literal) => {
        concat!("usr/lib/cairn/", $name)
    };
}

node_path!(
    /// cairn's own read-only folder in the root: the builder writes it, a profile's `[[file]]` may not.
    LIB_DIR, LIB_DIR_IN_ROOT = "usr/lib/cairn"
);
node_path!(
    /// The static agent the units run.
    AGENT, AGENT_IN_ROOT = lib!("cairn-agent")
);
node_path!(
    /// The profile the image was built from, as the agent applies it.
    BAKED_PROFILE, BAKED_PROFILE_IN_ROOT = lib!("profile.toml")
);
node_path!(
    /// The image's factory /var, a tar the initrd unpacks into the data partition at first boot.
    FACTORY_VAR, FACTORY_VAR_IN_ROOT = lib!("factory/var.tar")
);
node_path!(
    /// The `[[preload]]` OCI archives, which the Kubernetes phase hands to containerd.
    IMAGES_DIR, IMAGES_DIR_IN_ROOT = lib!("images")
);
node_path!(
    /// The `[[snap]]` files, `NAME_REVISION.snap` and `.assert`, which the agent installs with the image's snapd.
    SNAPS_DIR, SNAPS_DIR_IN_ROOT = lib!("snaps")
);
node_path!(
    /// The snaps in the order they are installed: JSON, a list of [`crate::snap::StoredSnap`].
    SNAPS_PLAN, SNAPS_PLAN_IN_ROOT = lib!("snaps/install.json")
);
node_path!(
    /// The certificate (DER) the image's boot chain is signed with, when it is: an update's UKI must be signed by
    /// it too. Public: the key never enters the image.
    SECURE_BOOT_CERT, SECURE_BOOT_CERT_IN_ROOT = lib!("secure-boot/db.der")
);
node_path!(
    /// Where the initrd mounts the EFI system partition (the builder makes the mount point): the agent reads
    /// instance data from it.
    ESP_MOUNT, ESP_MOUNT_IN_ROOT = "efi"
);
node_path!(
    /// In the initrd, not the root: the kernel modules the initrd loads, one path a line, in load order.
    INITRD_MODULES, INITRD_MODULES_IN_ROOT = "etc/cairn/modules"
);

/// The prefix of every kernel command-line key cairn owns: a profile's `kernel-cmdline` may not use it.
pub const CMDLINE_PREFIX: &str = "cairn.";
/// `cairn.verity=ROOTHASH`: the root hash the initrd verifies the root against (the builder's loader entry
/// carries it; systemd's `roothash=` is never used).
pub const VERITY_KEY: &str = "cairn.verity";
/// `cairn.instance=URL`: where the agent fetches the node's instance data.
pub const INSTANCE_KEY: &str = "cairn.instance";
/// `cairn.datasource=NAME`: asks the agent for one network datasource explicitly.
pub const DATASOURCE_KEY: &str = "cairn.datasource";

/// QEMU's fw_cfg entry the agent reads instance data from: `-fw_cfg name=opt/cairn/instance.toml,file=FILE`.
pub const FW_CFG_INSTANCE: &str = "opt/cairn/instance.toml";

/// The console lines' prefixes. The initrd says `cairn-init: ready {json}` or `cairn-init: failed {json}`; the
/// agent says `cairn-agent: PHASE ready {json}` as each phase ends, then, for the whole node,
/// `cairn-agent: ready {status}` (or `cairn-agent: failed {status}` as soon as a phase fails). Tests and
/// `cairn boot` wait for these.
pub const CONSOLE_INIT: &str = "cairn-init: ";
pub const CONSOLE_AGENT: &str = "cairn-agent: ";
/// The word after the prefix on a whole-node line (and the initrd's).
pub const CONSOLE_READY: &str = "ready ";
pub const CONSOLE_FAILED: &str = "failed ";

/// Whether a console line of cairn's is whole: it carries no JSON, or JSON that parses.
pub fn console_line_is_whole(line: &str) -> bool {
    match line.find('{') {
        None => true,
        Some(at) => serde_json::from_str::<serde::de::IgnoredAny>(line[at..].trim_end()).is_ok(),
    }
}

/// How many console lines a cairn line may be broken into before it is taken as it is.
pub const CONSOLE_PIECES: usize = 8;

/// A cairn console line (`cairn-agent: ready {json}`) made whole from the serial console's lines. The kernel writes
/// a tty in chunks of at most 2048 bytes, and its own messages (`[   11.510090] random: crng init done`) can land
/// between two chunks of a long line, ending it early: the line's text goes on at the start of a later line. While
/// the JSON does not parse, a kernel message at the end is cut off and the next line appended, at most
/// [`CONSOLE_PIECES`] lines in all. `None` when the lines given do not make it whole yet (more may come).
pub fn rejoin_console_line<'a>(
    first: &str,
    mut next: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let mut line = first.trim_end_matches(['\r', '\n']).to_string();
    for _ in 1..CONSOLE_PIECES {
        if console_line_is_whole(&line) {
            return Some(line);
        }
        if let Some(at) = kernel_message_start(&line) {
            line.truncate(at);
        }
        line.push_str(next.next()?.trim_end_matches(['\r', '\n']));
    }
    console_line_is_whole(&line).then_some(line)
}

/// Where a kernel message (`[ SECONDS.MICROS] ...`, printk's timestamp) starts in `line`, the last one.
fn kernel_message_start(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    (0..b.len()).rev().find(|&i| {
        if b[i] != b'[' {
            return false;
        }
        let rest = &line[i + 1..];
        let Some(end) = rest.find(']') else {
            return false;
        };
        let stamp = rest[..end].trim_start();
        let (secs, micros) = stamp.split_once('.').unwrap_or(("", ""));
        !secs.is_empty()
            && !micros.is_empty()
            && secs.bytes().all(|c| c.is_ascii_digit())
            && micros.bytes().all(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_line_broken_by_the_kernel_is_made_whole() {
        let whole = r#"cairn-agent: ready {"phase":"system","steps":[{"name":"a"}],"ready":true}"#;
        assert_eq!(
            rejoin_console_line(whole, std::iter::empty()).as_deref(),
            Some(whole)
        );
        // Broken mid-JSON by a kernel message, the rest on the next line.
        let (a, b) = whole.split_at(40);
        let first = format!("{a}[   11.510090] random: crng init done");
        assert_eq!(
            rejoin_console_line(&first, [b].into_iter()).as_deref(),
            Some(whole)
        );
        // Twice, with a line of the kernel's own between.
        let (a, rest) = whole.split_at(25);
        let (b, c) = rest.split_at(20);
        let first = format!("{a}[    9.1] x");
        let second = format!("{b}[   10.25] y: [z]");
        assert_eq!(
            rejoin_console_line(&first, [second.as_str(), c].into_iter()).as_deref(),
            Some(whole)
        );
        // Not yet whole: more lines may come.
        assert_eq!(rejoin_console_line(a, std::iter::empty()), None);
        // No JSON: as it is.
        assert_eq!(
            rejoin_console_line("cairn-init: rebooting", std::iter::empty()).as_deref(),
            Some("cairn-init: rebooting")
        );
        assert!(!console_line_is_whole("cairn-agent: ready {\"a\":"));
    }

    #[test]
    fn root_uuids_split_the_root_hash() {
        let hash: [u8; 32] = std::array::from_fn(|i| (i * 17) as u8);
        let RootUuids { root, verity } = root_uuids(&hash);
        assert_eq!(root, "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(verity, "10213243-5465-7687-98a9-bacbdcedfe0f");
    }

    #[test]
    fn paths_come_in_pairs() {
        assert_eq!(AGENT, "/usr/lib/cairn/cairn-agent");
        assert_eq!(AGENT_IN_ROOT, "usr/lib/cairn/cairn-agent");
        assert_eq!(FACTORY_VAR, "/usr/lib/cairn/factory/var.tar");
        assert_eq!(ESP_MOUNT, "/efi");
        assert_eq!(INITRD_MODULES_IN_ROOT, "etc/cairn/modules");
        for p in [AGENT, BAKED_PROFILE, FACTORY_VAR, IMAGES_DIR] {
            assert!(p.starts_with(&format!("{LIB_DIR}/")), "{p}");
        }
    }

    #[test]
    fn every_key_has_the_prefix() {
        for k in [VERITY_KEY, INSTANCE_KEY, DATASOURCE_KEY] {
            assert!(k.starts_with(CMDLINE_PREFIX), "{k}");
        }
    }
}
