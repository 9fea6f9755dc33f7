//! [`KvSnapshot`] and its format, written by the snapshot writer thread and read back by
//! [`KeyValueStore::restore`](crate::StateMachine::restore).

use std::io::{self, Read, Write};

use imbl::OrdMap;

use super::entry::Entry;
use crate::WriteSnapshot;

/// What starts a v2 (or later) snapshot: no v1 key is this long.
const MARKER: [u8; 4] = [0xFF; 4];
/// What follows the marker.
const MAGIC: [u8; 4] = *b"IRKV";
/// The format [`KvSnapshot`] writes.
const VERSION: u32 = 2;

/// A captured [`KeyValueStore`](super::KeyValueStore): a structural share of the map and its
/// revision, so capturing is O(1) and the store goes on applying while this is written out.
///
/// Format, version 2 (all integers little-endian):
///
/// ```text
/// ff ff ff ff  "IRKV"  u32 format version = 2  u64 store revision
/// then per key, in key order:
///   u32 key length, key, u32 value length, value,
///   u64 create_revision, u64 mod_revision, u64 version
/// ```
///
/// Version 1, from before revisions, is the pairs alone (`u32` key length, key, `u32` value
/// length, value); it is still restored, at revision 0, each key with create = mod = 0 and
/// version 1. A v1 snapshot cannot start with `ff ff ff ff`: that would be a 4 GiB key, and
/// commands are limited to [`MAX_COMMAND_SIZE`](crate::actors::wire::MAX_COMMAND_SIZE).
/// Unknown versions, impossible revisions and truncated fields are refused
/// ([`io::ErrorKind::InvalidData`], [`io::ErrorKind::UnexpectedEof`]); a cut between two keys
/// cannot be told from a shorter snapshot (the runtime checksums snapshots before restoring).
#[derive(Debug)]
pub struct KvSnapshot {
    map: OrdMap<String, Entry>,
    revision: u64,
}

impl KvSnapshot {
    pub(super) fn new(map: OrdMap<String, Entry>, revision: u64) -> Self {
        Self { map, revision }
    }
}

impl WriteSnapshot for KvSnapshot {
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        out.write_all(&MARKER)?;
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&self.revision.to_le_bytes())?;
        for (key, e) in self.map.iter() {
            write_string(&mut out, key)?;
            write_string(&mut out, &e.value)?;
            for n in [e.create_revision, e.mod_revision, e.version] {
                out.write_all(&n.to_le_bytes())?;
            }
        }
        out.flush()
    }
}

fn write_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    let len = u32::try_from(s.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(s.as_bytes())
}

/// Reads a snapshot of either version: the map and the store revision.
pub(super) fn read(input: &mut dyn io::Read) -> io::Result<(OrdMap<String, Entry>, u64)> {
    let mut input = io::BufReader::new(input);
    match read_u32_or_end(&mut input)? {
        None => Ok((OrdMap::new(), 0)),
        Some(first) if first == u32::from_le_bytes(MARKER) => read_v2(&mut input),
        Some(first_len) => read_v1(&mut input, first_len),
    }
}

fn read_v1(input: &mut impl Read, first_len: u32) -> io::Result<(OrdMap<String, Entry>, u64)> {
    let mut map = OrdMap::new();
    let mut key_len = Some(first_len);
    while let Some(len) = key_len {
        let key = read_string(input, len)?;
        let value_len = read_u32(input)?;
        let value = read_string(input, value_len)?;
        let entry = Entry {
            value,
            create_revision: 0,
            mod_revision: 0,
            version: 1,
        };
        map.insert(key, entry);
        key_len = read_u32_or_end(input)?;
    }
    Ok((map, 0))
}

fn read_v2(input: &mut impl Read) -> io::Result<(OrdMap<String, Entry>, u64)> {
    let mut magic = [0; 4];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(invalid("not a key-value store snapshot"));
    }
    let version = read_u32(input)?;
    if version != VERSION {
        return Err(invalid(format!(
            "key-value snapshot version {version} is not supported (this build reads 1 and 2)"
        )));
    }
    let revision = read_u64(input)?;
    let mut map = OrdMap::new();
    while let Some(len) = read_u32_or_end(input)? {
        let key = read_string(input, len)?;
        let value_len = read_u32(input)?;
        let value = read_string(input, value_len)?;
        let entry = Entry {
            value,
            create_revision: read_u64(input)?,
            mod_revision: read_u64(input)?,
            version: read_u64(input)?,
        };
        if entry.version == 0
            || entry.create_revision > entry.mod_revision
            || entry.mod_revision > revision
        {
            return Err(invalid(format!("key {key:?} has impossible revisions")));
        }
        map.insert(key, entry);
    }
    Ok((map, revision))
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// A `u32`, or `None` at a clean end of input (an end inside it is an error).
fn read_u32_or_end(input: &mut impl Read) -> io::Result<Option<u32>> {
    let mut bytes = [0; 4];
    let mut filled = 0;
    while filled < bytes.len() {
        match input.read(&mut bytes[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(u32::from_le_bytes(bytes)))
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// A string of `len` bytes. It grows as bytes arrive rather than trusting `len` up front, so a
/// corrupt length fails at the end of input instead of allocating gigabytes.
fn read_string(input: &mut impl Read, len: u32) -> io::Result<String> {
    let mut bytes = Vec::new();
    input.take(u64::from(len)).read_to_end(&mut bytes)?;
    if bytes.len() != len as usize {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
