//! Encoding header blocks (RFC 7541 §6). A field in the static table, or already in the dynamic
//! table, is sent as an index; otherwise as a literal, with its name indexed when either table
//! has the name. Literals are added to the dynamic table unless they are sensitive (sent never
//! indexed) or of a kind whose values rarely repeat (paths, lengths, cookies and the like, as
//! nghttp2 decides). Strings are Huffman-encoded when that is shorter.
//!
//! A proxy sends much the same fields in the same order on every message of a connection, so
//! the encoder remembers, for each position in the last block, the index that field was sent
//! with. The next block's field at that position is compared with the table entry at that
//! index first (a name and a value compare, no table lookups); the index is used only if the
//! entry still holds that field, so the memory can never produce a wrong index.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::huffman;
use super::table::{find_static, Dynamic, ENTRY_OVERHEAD, STATIC};

/// The encoding side of one connection's HPACK context.
#[derive(Debug)]
pub struct Encoder {
    table: Dynamic,
    /// Each table entry's name in short (length, first and last byte), in the table's order:
    /// the scan for a field compares these and looks at the bytes of a name only when they
    /// match.
    tags: VecDeque<u32>,
    /// The smallest maximum set since the last block, and the latest: both are announced at
    /// the start of the next block (RFC 7541 §4.2).
    pending: Option<(usize, usize)>,
    /// By position in the last blocks: how the field there was sent (see [`Seen`]).
    seen: Vec<Seen>,
    /// The position of the next field in the current block.
    at: usize,
}

/// How the field at one position of a block was sent last: the table index of the whole
/// field, or of its name with the value a literal not indexed. Checked against the table
/// before it is used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    /// Sent as this index (static or dynamic).
    Field(u16),
    /// A literal without indexing after this name index; the value Huffman-coded or not.
    Name(u16, bool),
}

/// Positions remembered per block; fields after these take the full lookup.
const SEEN_MAX: usize = 32;

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

/// The largest dynamic table this encoder uses, whatever the peer allows.
const MAX_TABLE: usize = 4096;

impl Encoder {
    /// An encoder with the protocol's initial table size (4,096 bytes).
    pub fn new() -> Encoder {
        Encoder {
            table: Dynamic::new(4096),
            tags: VecDeque::new(),
            pending: None,
            seen: Vec::new(),
            at: 0,
        }
    }

    /// The table (for tests and diagnostics).
    pub fn table(&self) -> &Dynamic {
        &self.table
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed: the table is resized (at most 4,096
    /// bytes) and the change announced at the start of the next block.
    pub fn set_max_size(&mut self, peer: usize) {
        let size = peer.min(MAX_TABLE);
        if size == self.table.max() && self.pending.is_none() {
            return;
        }
        let smallest = self.pending.map_or(size, |(s, _)| s.min(size));
        self.pending = Some((smallest, size));
        self.table.set_max(size);
        self.tags.truncate(self.table.len());
    }

    /// Starts a header block: any pending table size update goes first.
    pub fn begin(&mut self, out: &mut impl BufMut) {
        self.at = 0;
        if let Some((smallest, last)) = self.pending.take() {
            if smallest != last {
                integer(smallest, 5, 0x20, out);
            }
            integer(last, 5, 0x20, out);
        }
    }

    /// Appends one field to the block begun with [`Encoder::begin`].
    pub fn field(&mut self, name: &[u8], value: &[u8], sensitive: bool, out: &mut BytesMut) {
        let at = self.at;
        self.at += 1;
        if !sensitive {
            if let Some(&seen) = self.seen.get(at) {
                if self.repeat(seen, name, value, out) {
                    return;
                }
            }
        }
        let seen = self.lookup(name, value, sensitive, out);
        if at < self.seen.len() {
            self.seen[at] = seen;
        } else if at == self.seen.len() && at < SEEN_MAX {
            self.seen.push(seen);
        }
    }

    /// Sends the field as it was sent at this position last time, if the table entry that
    /// was used still holds it; false if the full lookup is needed.
    fn repeat(&self, seen: Seen, name: &[u8], value: &[u8], out: &mut BytesMut) -> bool {
        let index = match seen {
            Seen::Nothing => return false,
            Seen::Field(i) | Seen::Name(i, _) => i as usize,
        };
        let (n, v): (&[u8], &[u8]) = if index <= STATIC.len() {
            let (n, v) = STATIC[index - 1];
            (n.as_bytes(), v.as_bytes())
        } else {
            match self.table.get(index - STATIC.len() - 1) {
                Some((n, v)) => (n, v),
                None => return false,
            }
        };
        if n != name {
            return false;
        }
        match seen {
            Seen::Field(_) if v == value => integer(index, 7, 0x80, out),
            // A value the static table has whole is worth its index.
            Seen::Name(_, _) if name == b":path" && (value == b"/" || value == b"/index.html") => {
                return false
            }
            Seen::Name(_, huffman) => {
                integer(index, 4, 0x00, out);
                literal(value, huffman, out);
            }
            _ => return false,
        }
        true
    }

    /// The full lookup: static table, then dynamic; says how the field was sent. Kept out of
    /// line so that the repeat path stays small.
    #[inline(never)]
    fn lookup(&mut self, name: &[u8], value: &[u8], sensitive: bool, out: &mut BytesMut) -> Seen {
        let statik = find_static(name, value);
        if let Some((_, Some(i))) = statik {
            integer(i, 7, 0x80, out);
            return Seen::Field(i as u16);
        }
        let mut name_index = statik.map(|(i, _)| i);
        if !sensitive {
            let t = tag(name);
            for (i, _) in self.tags.iter().enumerate().filter(|(_, &x)| x == t) {
                let (n, v) = self.table.get(i).expect("tags follow the table");
                if n.as_ref() == name {
                    if v.as_ref() == value {
                        integer(62 + i, 7, 0x80, out);
                        return Seen::Field((62 + i) as u16);
                    }
                    name_index.get_or_insert(62 + i);
                }
            }
        }
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // A field whose values rarely repeat is still indexed the first time when its name is
        // in neither table: later ones then name it by index (`x-request-id` on every request
        // would otherwise spell its name out each time).
        let index = indexable(name, value) || name_index.is_none();
        let (prefix, flags) = if sensitive {
            (4, 0x10)
        } else if index && size <= self.table.max() * 3 / 4 {
            self.table
                .insert(Bytes::copy_from_slice(name), Bytes::copy_from_slice(value));
            self.tags.push_front(tag(name));
            self.tags.truncate(self.table.len());
            (6, 0x40)
        } else {
            (4, 0x00)
        };
        match name_index {
            Some(i) => integer(i, prefix, flags, out),
            None => {
                out.put_u8(flags);
                string(name, out);
            }
        }
        let huffman = huffman_worthwhile(name);
        literal(value, huffman, out);
        // Only a name whose values are never indexed is remembered for its name index: the
        // next value then goes out the same way whatever it is.
        match name_index {
            Some(i) if flags == 0x00 && !indexable(name, value) && name != b"cookie" => {
                Seen::Name(i as u16, huffman)
            }
            _ => Seen::Nothing,
        }
    }
}

/// A value after its name: a string literal, Huffman-coded when worthwhile and shorter.
fn literal(value: &[u8], huffman: bool, out: &mut BytesMut) {
    if huffman {
        string(value, out);
    } else {
        integer(value.len(), 7, 0x00, out);
        out.put_slice(value);
    }
}

fn tag(name: &[u8]) -> u32 {
    match name {
        [] => 0,
        [first, .., last] => (name.len() as u32) << 16 | (*first as u32) << 8 | *last as u32,
        [only] => 1 << 16 | (*only as u32) << 8 | *only as u32,
    }
}

/// Whether Huffman coding a value is worth its instructions: not for random identifiers, new
/// on every request, where it saves about a quarter of 36 bytes for about 300 instructions.
fn huffman_worthwhile(name: &[u8]) -> bool {
    name != b"x-request-id"
}

/// Whether a literal is worth a dynamic table entry: not for values that rarely repeat.
fn indexable(name: &[u8], value: &[u8]) -> bool {
    match name {
        b":path" | b"content-length" | b"location" | b"set-cookie" | b"etag"
        | b"if-modified-since" | b"if-none-match" | b"age" | b"x-request-id" => false,
        b"cookie" => value.len() >= 20,
        _ => true,
    }
}

/// An integer with an `n`-bit prefix, the byte's other bits set to `flags` (RFC 7541 §5.1).
#[inline]
fn integer(value: usize, n: u8, flags: u8, out: &mut impl BufMut) {
    let max_prefix = (1usize << n) - 1;
    if value < max_prefix {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.put_u8((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// A string literal, Huffman-encoded when that is shorter (RFC 7541 §5.2). A short one is
/// encoded once, in place behind a one-byte length, and written plainly instead if that is
/// not shorter; a long one is measured first.
fn string(s: &[u8], out: &mut BytesMut) {
    // No code is shorter than 5 bits: one or two bytes never get shorter.
    if s.len() <= 2 {
        out.put_u8(s.len() as u8);
        out.put_slice(s);
        return;
    }
    if s.len() < 127 {
        let at = out.len();
        out.put_u8(0);
        huffman::encode(s, out);
        let huff = out.len() - at - 1;
        if huff < s.len() {
            out[at] = 0x80 | huff as u8;
        } else {
            out.truncate(at);
            out.put_u8(s.len() as u8);
            out.put_slice(s);
        }
        return;
    }
    let huff = huffman::encoded_len(s);
    if huff < s.len() {
        integer(huff, 7, 0x80, out);
        huffman::encode(s, out);
    } else {
        integer(s.len(), 7, 0x00, out);
        out.put_slice(s);
    }
}
