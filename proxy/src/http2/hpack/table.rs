//! HPACK's two tables (RFC 7541 §2.3): the static table of Appendix A (indices 1 to 61), then
//! the dynamic table (from 62, newest first), whose size is the sum of each entry's name and
//! value lengths plus 32 and is kept within a maximum by evicting the oldest entries.

use std::collections::VecDeque;

use bytes::Bytes;

/// RFC 7541 Appendix A; index `i` here is HPACK index `i + 1`.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The first static index (1-based) with this name, and the one with this name and value if
/// there is one.
pub fn find_static(name: &[u8], value: &[u8]) -> Option<(usize, Option<usize>)> {
    // Entries of one name are adjacent: the name picks the range (one dispatch on the name,
    // not a scan of the table), then the values in it are compared.
    let (first, count) = match name {
        b":authority" => (1, 1),
        b":method" => (2, 2),
        b":path" => (4, 2),
        b":scheme" => (6, 2),
        b":status" => (8, 7),
        b"accept-charset" => (15, 1),
        b"accept-encoding" => (16, 1),
        b"accept-language" => (17, 0),
        b"accept-ranges" => (18, 0),
        b"accept" => (19, 0),
        b"access-control-allow-origin" => (20, 0),
        b"age" => (21, 0),
        b"allow" => (22, 0),
        b"authorization" => (23, 0),
        b"cache-control" => (24, 0),
        b"content-disposition" => (25, 0),
        b"content-encoding" => (26, 0),
        b"content-language" => (27, 0),
        b"content-length" => (28, 0),
        b"content-location" => (29, 0),
        b"content-range" => (30, 0),
        b"content-type" => (31, 0),
        b"cookie" => (32, 0),
        b"date" => (33, 0),
        b"etag" => (34, 0),
        b"expect" => (35, 0),
        b"expires" => (36, 0),
        b"from" => (37, 0),
        b"host" => (38, 0),
        b"if-match" => (39, 0),
        b"if-modified-since" => (40, 0),
        b"if-none-match" => (41, 0),
        b"if-range" => (42, 0),
        b"if-unmodified-since" => (43, 0),
        b"last-modified" => (44, 0),
        b"link" => (45, 0),
        b"location" => (46, 0),
        b"max-forwards" => (47, 0),
        b"proxy-authenticate" => (48, 0),
        b"proxy-authorization" => (49, 0),
        b"range" => (50, 0),
        b"referer" => (51, 0),
        b"refresh" => (52, 0),
        b"retry-after" => (53, 0),
        b"server" => (54, 0),
        b"set-cookie" => (55, 0),
        b"strict-transport-security" => (56, 0),
        b"transfer-encoding" => (57, 0),
        b"user-agent" => (58, 0),
        b"vary" => (59, 0),
        b"via" => (60, 0),
        b"www-authenticate" => (61, 0),
        _ => return None,
    };
    // Only the entries counted above have a value to match (the rest have an empty one,
    // which a field with an empty value still matches).
    let exact = if count == 0 {
        (value.is_empty()).then_some(first)
    } else {
        (first..first + count).find(|i| STATIC[i - 1].1.as_bytes() == value)
    };
    Some((first, exact))
}

/// The overhead RFC 7541 §4.1 counts per entry.
pub const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table: entries newest first, their total size and the maximum.
#[derive(Debug)]
pub struct Dynamic {
    entries: VecDeque<(Bytes, Bytes)>,
    size: usize,
    max: usize,
}

impl Dynamic {
    pub fn new(max: usize) -> Dynamic {
        Dynamic {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `i` (0 = newest; HPACK index `62 + i`).
    pub fn get(&self, i: usize) -> Option<&(Bytes, Bytes)> {
        self.entries.get(i)
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Bytes, Bytes)> {
        self.entries.iter()
    }

    /// A new maximum; entries are evicted until the table fits.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    /// Adds an entry, evicting old ones to make room; one larger than the maximum empties the
    /// table and is not added (RFC 7541 §4.4).
    pub fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.entries.push_front((name, value));
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let Some((n, v)) = self.entries.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}
