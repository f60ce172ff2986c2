//! Bounds on what a layer controls. A layer is untrusted input: without them a 4.6 MB gzip blob holding one
//! PAX header that claims 1 GiB costs 1.3 GB of memory, and a GNU long name record of 256 MiB puts a 256 MB file
//! name in the root. Each bound is checked before the thing it bounds is read or kept.

use std::fmt;

/// A GNU long name (`L`) or long link (`K`) record holds one path; `MAX_PATH` bounds what may come out of it, and
/// the record gets 16 times that for the `./` and `//` a path may carry. Go's archive/tar allows 1 MiB for any
/// such record; nothing legitimate comes near either.
pub const MAX_LONG_NAME: u64 = 64 << 10;

/// A PAX extended header (`x`) carries a path, a link target and the entry's xattrs: room for a dozen values of
/// the kernel's largest xattr (`MAX_XATTR_VALUE`), as much as Go's archive/tar allows (maxSpecialFileSize). Global
/// headers (`g`) are refused as an unsupported entry type before any of their data is read.
pub const MAX_PAX_HEADER: u64 = 1 << 20;

/// PATH_MAX is 4096 bytes with the terminating NUL: a longer path cannot be passed to the kernel, so the root
/// could not be used (or unpacked by any runtime) anyway.
pub const MAX_PATH: usize = 4095;

/// NAME_MAX: the longest file name ext4, squashfs and the kernel's VFS accept.
pub const MAX_COMPONENT: usize = 255;

/// The kernel refuses a symlink target of PATH_MAX bytes or more (and ext4 one longer than its 4 KiB block less
/// one byte).
pub const MAX_LINK_TARGET: usize = 4095;

/// XATTR_NAME_MAX, `SCHILY.xattr.` prefix not counted.
pub const MAX_XATTR_NAME: usize = 255;

/// XATTR_SIZE_MAX: setxattr(2) refuses a larger value. An entry's number of xattrs is bounded by `MAX_PAX_HEADER`.
pub const MAX_XATTR_VALUE: usize = 64 << 10;

/// An index entry costs about 190 bytes of memory with a typical path (measured: 200 000 entries add 38 MB of peak
/// RSS), so a full layer's index stays near 200 MB; the largest real layers (language package trees, CUDA) hold a
/// few hundred thousand entries.
pub const MAX_ENTRIES: usize = 1 << 20;

/// Paths, link targets and xattrs of one layer's entries together: each entry's are bounded above, and this bounds
/// their sum, so that a layer of many entries with long names and large xattrs cannot claim gigabytes. Real layers
/// average well under 100 bytes a path.
pub const MAX_METADATA: u64 = 256 << 20;

/// The bounds one unpack applies; [`Limits::DEFAULT`] is what a build uses (tests lower some to stay fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub long_name: u64,
    pub pax_header: u64,
    pub path: usize,
    pub component: usize,
    pub link_target: usize,
    pub xattr_name: usize,
    pub xattr_value: usize,
    pub entries: usize,
    pub metadata: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        long_name: MAX_LONG_NAME,
        pax_header: MAX_PAX_HEADER,
        path: MAX_PATH,
        component: MAX_COMPONENT,
        link_target: MAX_LINK_TARGET,
        xattr_name: MAX_XATTR_NAME,
        xattr_value: MAX_XATTR_VALUE,
        entries: MAX_ENTRIES,
        metadata: MAX_METADATA,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Which bound an entry broke, with the size it claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("GNU long name of {size} bytes exceeds the limit of {limit}")]
    LongName { size: u64, limit: u64 },
    #[error("GNU long link name of {size} bytes exceeds the limit of {limit}")]
    LongLink { size: u64, limit: u64 },
    #[error("PAX extended header of {size} bytes exceeds the limit of {limit}")]
    PaxHeader { size: u64, limit: u64 },
    #[error("path of {len} bytes exceeds the limit of {limit}")]
    Path { len: usize, limit: usize },
    #[error("path component of {len} bytes exceeds the limit of {limit}")]
    Component { len: usize, limit: usize },
    #[error("link target of {len} bytes exceeds the limit of {limit}")]
    LinkTarget { len: usize, limit: usize },
    #[error("xattr name of {len} bytes exceeds the limit of {limit}")]
    XattrName { len: usize, limit: usize },
    #[error("xattr `{name}`: value of {len} bytes exceeds the limit of {limit}")]
    XattrValue {
        name: String,
        len: usize,
        limit: usize,
    },
    #[error("more than {limit} entries")]
    Entries { limit: usize },
    #[error("paths, link targets and xattrs total more than the limit of {limit} bytes")]
    Metadata { limit: u64 },
}

/// Where in a layer an entry is: its position among the entries (from 0, as in the index), the offset of its
/// first header (or of the record before it) in the uncompressed tar, and its path as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub entry: usize,
    pub offset: u64,
    pub path: Option<String>,
}

/// Enough of a path to recognise it in a message, not the megabytes a hostile one may have.
const SHOWN_PATH: usize = 128;

impl At {
    pub fn new(entry: usize, offset: u64, path: Option<&[u8]>) -> At {
        let path = path.map(|p| {
            let shown = String::from_utf8_lossy(&p[..p.len().min(SHOWN_PATH)]).into_owned();
            if p.len() > SHOWN_PATH {
                format!("{shown}…")
            } else {
                shown
            }
        });
        At {
            entry,
            offset,
            path,
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {} (offset {}", self.entry, self.offset)?;
        if let Some(path) = &self.path {
            write!(f, ", `{path}`")?;
        }
        write!(f, ")")
    }
}
