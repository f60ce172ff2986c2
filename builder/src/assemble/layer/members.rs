//! A layer's tar stream, member by member, each with the records that describe it (GNU long name, long link, PAX
//! extended header) gathered in.
//!
//! The tar crate's iterator reads those records whole into memory, whatever size their header claims, before
//! anyone can look at them; here each claimed size is checked against its limit before a byte of it is read. Only
//! the walk from header to header is done here: parsing a header or a PAX record is the crate's (`tar::Header`,
//! `tar::PaxExtensions`), and a member comes out as the crate's iterator would give it (PAX `size`, `uid` and
//! `gid` applied to the header, the records kept for the path and link target).

use std::borrow::Cow;
use std::io::{self, Read};

use super::limits::{Exceeded, Limits};

const BLOCK: u64 = 512;

/// One member and the records before it.
pub struct Member {
    pub header: tar::Header,
    pub long_name: Option<Vec<u8>>,
    pub long_link: Option<Vec<u8>>,
    pub pax: Option<Vec<u8>>,
    /// Where the first header of the member (or of a record before it) starts.
    pub start: u64,
    /// Where its data starts.
    pub data: u64,
    /// Bytes of data: the header's size, or the PAX `size` record's.
    pub size: u64,
}

impl Member {
    /// The path as written: long name, else PAX `path`, else the header's.
    pub fn path_bytes(&self) -> Cow<'_, [u8]> {
        if let Some(name) = &self.long_name {
            return Cow::Borrowed(name.strip_suffix(b"\0").unwrap_or(name));
        }
        match self.pax_value(b"path") {
            Some(path) => Cow::Borrowed(path),
            None => self.header.path_bytes(),
        }
    }

    /// The link target as written: long link, else PAX `linkpath`, else the header's.
    pub fn link_name_bytes(&self) -> Option<Cow<'_, [u8]>> {
        if let Some(name) = &self.long_link {
            return Some(Cow::Borrowed(name.strip_suffix(b"\0").unwrap_or(name)));
        }
        match self.pax_value(b"linkpath") {
            Some(link) => Some(Cow::Borrowed(link)),
            None => self.header.link_name_bytes(),
        }
    }

    /// The PAX records, when the member has any.
    pub fn pax_extensions(&self) -> Option<tar::PaxExtensions<'_>> {
        self.pax.as_deref().map(tar::PaxExtensions::new)
    }

    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax_extensions()?
            .filter_map(|r| r.ok())
            .find(|r| r.key_bytes() == key)
            .map(|r| r.value_bytes())
    }
}

/// Why the walk stopped: the stream is not a well-formed tar, or a record claims more than its limit.
pub enum MemberError {
    Io(io::Error),
    Limit { start: u64, exceeded: Exceeded },
}

impl From<io::Error> for MemberError {
    fn from(e: io::Error) -> Self {
        MemberError::Io(e)
    }
}

fn other(message: &str) -> io::Error {
    io::Error::other(message)
}

pub struct Members<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    position: u64,
    /// Where the next header starts.
    next: u64,
    limits: Limits,
}

impl<R: Read> Members<R> {
    pub fn new(inner: R, limits: Limits) -> Members<R> {
        Members {
            inner,
            position: 0,
            next: 0,
            limits,
        }
    }

    /// The stream, positioned after the end-of-archive block (or wherever the walk stopped).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next member, `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>, MemberError> {
        let start = self.next;
        let mut long_name = None;
        let mut long_link = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let Some(mut header) = self.next_header()? else {
                if self.next > start {
                    return Err(other(
                        "members found describing a future member but no future member found",
                    )
                    .into());
                }
                return Ok(None);
            };
            let data = self.position;
            let kind = header.entry_type();
            let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
            let record = recognised
                && (kind.is_gnu_longname()
                    || kind.is_gnu_longlink()
                    || kind.is_pax_local_extensions());
            let mut size = header.entry_size()?;
            if !record && !kind.is_pax_global_extensions() {
                // As the tar crate does: a PAX `size` overrides the header's, PAX ids replace the header's.
                if let Some(p) = &pax {
                    if let Some(s) = pax_number(p, "size") {
                        size = s;
                    }
                    if let Some(uid) = pax_number(p, "uid") {
                        header.set_uid(uid);
                    }
                    if let Some(gid) = pax_number(p, "gid") {
                        header.set_gid(gid);
                    }
                }
            }
            self.next = size
                .checked_add(BLOCK - 1)
                .and_then(|s| data.checked_add(s & !(BLOCK - 1)))
                .ok_or_else(|| other("size overflow"))?;
            if !record {
                return Ok(Some(Member {
                    header,
                    long_name,
                    long_link,
                    pax,
                    start,
                    data,
                    size,
                }));
            }
            let limit = |exceeded| MemberError::Limit { start, exceeded };
            if kind.is_gnu_longname() {
                if long_name.is_some() {
                    return Err(other("two long name entries describing the same member").into());
                }
                if size > self.limits.long_name {
                    return Err(limit(Exceeded::LongName {
                        size,
                        limit: self.limits.long_name,
                    }));
                }
                long_name = Some(self.read_data(size)?);
            } else if kind.is_gnu_longlink() {
                if long_link.is_some() {
                    return Err(other("two long name entries describing the same member").into());
                }
                if size > self.limits.long_name {
                    return Err(limit(Exceeded::LongLink {
                        size,
                        limit: self.limits.long_name,
                    }));
                }
                long_link = Some(self.read_data(size)?);
            } else {
                if pax.is_some() {
                    return Err(
                        other("two pax extensions entries describing the same member").into(),
                    );
                }
                if size > self.limits.pax_header {
                    return Err(limit(Exceeded::PaxHeader {
                        size,
                        limit: self.limits.pax_header,
                    }));
                }
                pax = Some(self.read_data(size)?);
            }
        }
    }

    /// Skips to the next header and reads it; `None` at the end of the archive (end of stream or a zero block).
    fn next_header(&mut self) -> io::Result<Option<tar::Header>> {
        // Past a zero block `position` is ahead of `next`, but the walk has ended there.
        self.skip(self.next.saturating_sub(self.position))?;
        let mut header = tar::Header::new_old();
        let block = header.as_mut_bytes();
        let mut read = 0;
        while read < block.len() {
            match self.inner.read(&mut block[read..]) {
                Ok(0) if read == 0 => return Ok(None),
                Ok(0) => return Err(other("failed to read entire block")),
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.position += BLOCK;
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(0, |a, b| a + u32::from(*b))
            + 8 * 32;
        if sum != header.cksum()? {
            return Err(other("archive header checksum mismatch"));
        }
        self.next = self.position;
        Ok(Some(header))
    }

    /// Reads a record's data (its size already checked) and moves past its padding.
    fn read_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(size as usize);
        let n = (&mut self.inner).take(size).read_to_end(&mut data)? as u64;
        self.position += n;
        if n < size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends inside a record",
            ));
        }
        Ok(data)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.position += skipped;
        if skipped < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "unexpected EOF during skip",
            ));
        }
        Ok(())
    }
}

/// A PAX record's value as a number, as the tar crate reads `size`, `uid` and `gid`: the first record with that
/// key, `None` when it does not parse or a malformed record comes before it.
fn pax_number(pax: &[u8], key: &str) -> Option<u64> {
    for record in tar::PaxExtensions::new(pax) {
        let record = record.ok()?;
        if record.key() == Ok(key) {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}
