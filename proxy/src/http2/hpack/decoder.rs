//! Decoding header blocks (RFC 7541 §6): indexed fields, literals with or without indexing,
//! never-indexed literals and dynamic table size updates. Names and values that are sent as
//! plain literals are slices of the block (no copy); Huffman-encoded ones are decoded into
//! new buffers.
//!
//! A regular field the dynamic table holds is also kept parsed (`http::HeaderName` and
//! `HeaderValue`, checked once when it is inserted): a field sent again by index, the common
//! case on a long-lived connection, reaches the request head without being parsed again.

use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

use super::table::{Dynamic, ENTRY_OVERHEAD, STATIC};
use super::{huffman, DecodeError};

/// One decoded header field, lent to the caller: a field sent by index is the table's own
/// entry, so a caller that has what it needs from [`Known`] takes no reference count on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a Bytes,
    pub value: &'a Bytes,
    /// Sent as never indexed: an intermediary must send it on the same way.
    pub never_indexed: bool,
}

/// What the tables already know of a field handed on: its name parsed and checked
/// (lowercase, valid) when the name came from a table, and its value checked when the whole
/// field came from the dynamic table. Passed beside the [`Field`], by reference, so that the
/// field itself stays small to move.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    pub name: Option<&'a HeaderName>,
    pub value: Option<&'a HeaderValue>,
}

/// A dynamic table entry parsed for `http`: its name if it is a valid, lowercase regular field
/// name, and then its value if that is valid.
type Parsed = Option<(HeaderName, Option<HeaderValue>)>;

fn parse(name: &Bytes, value: &Bytes) -> Parsed {
    if name.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    let n = HeaderName::from_bytes(name).ok()?;
    Some((n, HeaderValue::from_maybe_shared(value.clone()).ok()))
}

/// The static table's regular names, parsed (the first 14 entries are pseudo-headers).
static STATIC_NAMES: LazyLock<Vec<HeaderName>> = LazyLock::new(|| {
    STATIC[14..]
        .iter()
        .map(|(n, _)| HeaderName::from_static(n))
        .collect()
});

/// The static table as `Bytes`, so that a field sent by static index can be lent like a
/// dynamic one.
static STATIC_BYTES: LazyLock<Vec<(Bytes, Bytes)>> = LazyLock::new(|| {
    STATIC
        .iter()
        .map(|(n, v)| {
            (
                Bytes::from_static(n.as_bytes()),
                Bytes::from_static(v.as_bytes()),
            )
        })
        .collect()
});

/// Where a field's name (and maybe value) came from, for [`Known`].
#[derive(Clone, Copy)]
enum Source {
    Literal,
    /// A static index.
    Static(usize),
    /// Dynamic entry `k` (0 = newest): the whole field, or only its name.
    Dynamic(usize, bool),
}

/// The decoding side of one connection's HPACK context.
#[derive(Debug)]
pub struct Decoder {
    table: Dynamic,
    /// The table size this side allows (its SETTINGS_HEADER_TABLE_SIZE); size updates may not
    /// exceed it.
    allowed: usize,
    /// Where Huffman-coded strings are decoded to.
    scratch: BytesMut,
    /// The dynamic table's entries parsed, in the table's order.
    parsed: VecDeque<Parsed>,
}

/// The size of the chunks Huffman-coded strings are decoded into.
const SCRATCH: usize = 2048;

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(4096)
    }
}

impl Decoder {
    pub fn new(allowed: usize) -> Decoder {
        Decoder {
            table: Dynamic::new(allowed),
            allowed,
            scratch: BytesMut::new(),
            parsed: VecDeque::new(),
        }
    }

    /// The dynamic table (for tests and diagnostics).
    pub fn table(&self) -> &Dynamic {
        &self.table
    }

    /// Decodes one complete header block, calling `field` for each field in order. Fails once
    /// the fields' size (RFC 9113 §6.5.2: name + value + 32 each) passes `max_list`, so a small
    /// block cannot expand into a huge header list. `ListTooLarge` is reported once the whole
    /// block is decoded, so the context stays usable (the request can be refused on its own);
    /// any other failure leaves the context unusable: the connection must end with
    /// COMPRESSION_ERROR.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list: usize,
        mut field: impl FnMut(Field<'_>, Known<'_>),
    ) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut list = 0usize;
        let mut fields_seen = false;
        while at < block.len() {
            let b = block[at];
            // A literal's strings live here while the field is lent out.
            let literal: (Bytes, Bytes);
            let (name, value, never_indexed, from) = if b & 0x80 != 0 {
                // Indexed field.
                let i = integer(block, &mut at, 7)?;
                let (name, value) = self.lookup(i)?;
                let from = match i.checked_sub(62) {
                    Some(k) => Source::Dynamic(k, true),
                    None => Source::Static(i),
                };
                (name, value, false, from)
            } else if b & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let (name, value, _) = self.literal(block, &mut at, 6)?;
                // The table keeps copies: a slice of the block would keep the connection's
                // whole read buffer alive for as long as the entry lives.
                let (n, v) = (
                    Bytes::copy_from_slice(&name),
                    Bytes::copy_from_slice(&value),
                );
                self.parsed.push_front(parse(&n, &v));
                self.table.insert(n, v);
                self.parsed.truncate(self.table.len());
                literal = (name, value);
                (&literal.0, &literal.1, false, Source::Dynamic(0, true))
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field of a block.
                if fields_seen {
                    return Err(DecodeError::LateSizeUpdate);
                }
                let size = integer(block, &mut at, 5)?;
                if size > self.allowed {
                    return Err(DecodeError::SizeUpdateTooLarge(size, self.allowed));
                }
                self.table.set_max(size);
                self.parsed.truncate(self.table.len());
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let (name, value, from) = self.literal(block, &mut at, 4)?;
                literal = (name, value);
                (&literal.0, &literal.1, b & 0x10 != 0, from)
            };
            fields_seen = true;
            list = list.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
            // Past the bound the rest of the block is still decoded (its insertions keep the
            // table in step with the peer's), but no more fields are handed on.
            if list <= max_list {
                let f = Field {
                    name,
                    value,
                    never_indexed,
                };
                field(f, self.known(from));
            }
        }
        if list > max_list {
            return Err(DecodeError::ListTooLarge(max_list));
        }
        Ok(())
    }

    /// What the tables know of a field that came from `from`.
    fn known(&self, from: Source) -> Known<'_> {
        match from {
            Source::Literal => Known::default(),
            Source::Static(i) => Known {
                name: i.checked_sub(15).and_then(|k| STATIC_NAMES.get(k)),
                value: None,
            },
            Source::Dynamic(k, whole) => match self.parsed.get(k) {
                Some(Some((n, v))) => Known {
                    name: Some(n),
                    value: v.as_ref().filter(|_| whole),
                },
                _ => Known::default(),
            },
        }
    }

    /// A field by index: static (1..=61), then dynamic.
    fn lookup(&self, i: usize) -> Result<(&Bytes, &Bytes), DecodeError> {
        let entry = match i {
            0 => None,
            1..=61 => STATIC_BYTES.get(i - 1),
            _ => self.table.get(i - 62),
        };
        entry.map(|(n, v)| (n, v)).ok_or(DecodeError::BadIndex(i))
    }

    /// A literal field whose first byte carries a `prefix`-bit name index (0: a literal name).
    fn literal(
        &mut self,
        block: &Bytes,
        at: &mut usize,
        prefix: u8,
    ) -> Result<(Bytes, Bytes, Source), DecodeError> {
        let i = integer(block, at, prefix)?;
        let (name, from) = if i == 0 {
            (self.string(block, at)?, Source::Literal)
        } else {
            let from = match i.checked_sub(62) {
                Some(k) => Source::Dynamic(k, false),
                None => Source::Static(i),
            };
            (self.lookup(i)?.0.clone(), from)
        };
        let value = self.string(block, at)?;
        Ok((name, value, from))
    }

    /// A string literal (RFC 7541 §5.2).
    fn string(&mut self, block: &Bytes, at: &mut usize) -> Result<Bytes, DecodeError> {
        let huff = block.get(*at).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let end = at.checked_add(len).ok_or(DecodeError::Truncated)?;
        if end > block.len() {
            return Err(DecodeError::Truncated);
        }
        let raw = block.slice(*at..end);
        *at = end;
        if !huff {
            return Ok(raw);
        }
        // Decoded into a chunk shared by the block's strings (and later blocks'), not an
        // allocation each; the chunk is reused once every string cut from it is dropped.
        if self.scratch.capacity() - self.scratch.len() < raw.len() * 8 / 5 {
            self.scratch.reserve(SCRATCH.max(raw.len() * 8 / 5));
        }
        if let Err(e) = huffman::decode(&raw, &mut self.scratch) {
            self.scratch.clear();
            return Err(e.into());
        }
        Ok(self.scratch.split().freeze())
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1) starting at `block[*at]`. Values past
/// 2^28 are refused: no legitimate index, length or size comes near.
pub(super) fn integer(block: &[u8], at: &mut usize, n: u8) -> Result<usize, DecodeError> {
    let max_prefix = (1usize << n) - 1;
    let first = *block.get(*at).ok_or(DecodeError::Truncated)? as usize & max_prefix;
    *at += 1;
    if first < max_prefix {
        return Ok(first);
    }
    let mut value = max_prefix;
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(DecodeError::Truncated)? as usize;
        *at += 1;
        value += (b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::IntegerOverflow);
        }
    }
}
