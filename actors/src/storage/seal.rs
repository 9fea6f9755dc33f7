//! Checksums on every stored record. A sealed value is the record's bytes followed by a
//! little-endian CRC-32 over the table's tag, the record's key and its bytes: a flipped byte, a
//! truncated value, or a value copied under another key or into another table fails the check.
//! Values are verified every time they are read; a mismatch is a typed
//! [`crate::error::Corruption`], never a skipped record.

/// Bytes a seal adds to a value.
pub(crate) const SEAL_LEN: usize = 4;

/// Which table a sealed value belongs to (part of the checksum).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tag {
    Log,
    Meta,
    Chunk,
}

impl Tag {
    fn bytes(self) -> &'static [u8] {
        match self {
            Tag::Log => b"iroh-raft log",
            Tag::Meta => b"iroh-raft meta",
            Tag::Chunk => b"iroh-raft chunk",
        }
    }
}

fn checksum(tag: Tag, key: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(tag.bytes());
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(payload);
    h.finalize()
}

/// Appends the seal of `out[start..]` (the record just written there) to `out`.
pub(crate) fn seal_in_place(tag: Tag, key: &[u8], out: &mut Vec<u8>, start: usize) {
    let crc = checksum(tag, key, &out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// `payload` with its seal.
pub(crate) fn seal(tag: Tag, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + SEAL_LEN);
    out.extend_from_slice(payload);
    seal_in_place(tag, key, &mut out, 0);
    out
}

/// The record inside a sealed value, or `None` if the seal does not match.
pub(crate) fn unseal<'a>(tag: Tag, key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let split = sealed.len().checked_sub(SEAL_LEN)?;
    let (payload, crc) = sealed.split_at(split);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    (checksum(tag, key, payload) == crc).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_damage_breaks_the_seal() {
        let sealed = seal(Tag::Log, &7u64.to_le_bytes(), b"a record");
        assert_eq!(
            unseal(Tag::Log, &7u64.to_le_bytes(), &sealed),
            Some(&b"a record"[..])
        );
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(unseal(Tag::Log, &7u64.to_le_bytes(), &bad), None);
            }
        }
        for cut in 0..sealed.len() {
            assert_eq!(unseal(Tag::Log, &7u64.to_le_bytes(), &sealed[..cut]), None);
        }
        // The same bytes under another key or in another table.
        assert_eq!(unseal(Tag::Log, &8u64.to_le_bytes(), &sealed), None);
        assert_eq!(unseal(Tag::Meta, &7u64.to_le_bytes(), &sealed), None);
    }
}
