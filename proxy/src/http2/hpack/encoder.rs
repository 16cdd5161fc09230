//! Encoding header blocks (RFC 7541 §6). A field in the static table, or already in the dynamic
//! table, is sent as an index; otherwise as a literal, with its name indexed when either table
//! has the name. Literals are added to the dynamic table unless they are sensitive (sent never
//! indexed) or of a kind whose values rarely repeat (paths, lengths, cookies and the like, as
//! nghttp2 decides). Strings are Huffman-encoded when that is shorter.

use bytes::{BufMut, Bytes};

use super::huffman;
use super::table::{find_static, Dynamic, ENTRY_OVERHEAD};

/// The encoding side of one connection's HPACK context.
#[derive(Debug)]
pub struct Encoder {
    table: Dynamic,
    /// The smallest maximum set since the last block, and the latest: both are announced at
    /// the start of the next block (RFC 7541 §4.2).
    pending: Option<(usize, usize)>,
}

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
            pending: None,
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
    }

    /// Starts a header block: any pending table size update goes first.
    pub fn begin(&mut self, out: &mut impl BufMut) {
        if let Some((smallest, last)) = self.pending.take() {
            if smallest != last {
                integer(smallest, 5, 0x20, out);
            }
            integer(last, 5, 0x20, out);
        }
    }

    /// Appends one field to the block begun with [`Encoder::begin`].
    pub fn field(&mut self, name: &[u8], value: &[u8], sensitive: bool, out: &mut impl BufMut) {
        let statik = find_static(name, value);
        if let Some((_, Some(i))) = statik {
            return integer(i, 7, 0x80, out);
        }
        let mut name_index = statik.map(|(i, _)| i);
        if !sensitive {
            for (i, (n, v)) in self.table.iter().enumerate() {
                if n.as_ref() == name {
                    if v.as_ref() == value {
                        return integer(62 + i, 7, 0x80, out);
                    }
                    name_index.get_or_insert(62 + i);
                }
            }
        }
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        let (prefix, flags) = if sensitive {
            (4, 0x10)
        } else if indexable(name, value) && size <= self.table.max() * 3 / 4 {
            self.table
                .insert(Bytes::copy_from_slice(name), Bytes::copy_from_slice(value));
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
        string(value, out);
    }
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

/// A string literal, Huffman-encoded when that is shorter (RFC 7541 §5.2).
fn string(s: &[u8], out: &mut impl BufMut) {
    let huff = huffman::encoded_len(s);
    if huff < s.len() {
        integer(huff, 7, 0x80, out);
        huffman::encode(s, out);
    } else {
        integer(s.len(), 7, 0x00, out);
        out.put_slice(s);
    }
}
