//! HPACK's Huffman code (RFC 7541 Appendix B). The code is canonical: the code lengths alone
//! define it (codes of one length are consecutive, in symbol order), so the table here is the
//! 257 lengths (symbol 256 is EOS) and the codes are derived at compile time. Decoding reads the
//! input 32 bits at a time and finds a code's length by comparing against the first code of
//! each length, left-aligned: a few comparisons per symbol, no tree walk.

use bytes::BufMut;

/// Code length in bits of each symbol; index 256 is EOS.
const LEN: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;

/// The canonical code, derived from [`LEN`].
struct Canonical {
    /// Each symbol's code (right-aligned).
    codes: [u32; 257],
    /// Symbols in code order.
    syms: [u16; 257],
    /// Per length: index into `syms` of the first code of that length...
    offset: [u16; 31],
    /// ...and that code.
    first: [u32; 31],
    /// Per length: one past its last code, left-aligned to 32 bits (a peeked word below it has
    /// a code of this length or shorter).
    limit: [u64; 31],
}

const fn canonical() -> Canonical {
    let mut c = Canonical {
        codes: [0; 257],
        syms: [0; 257],
        offset: [0; 31],
        first: [0; 31],
        limit: [0; 31],
    };
    let mut code: u32 = 0;
    let mut n = 0;
    let mut len = 1;
    while len <= 30 {
        c.first[len] = code;
        c.offset[len] = n as u16;
        let mut sym = 0;
        while sym < 257 {
            if LEN[sym] as usize == len {
                c.codes[sym] = code;
                c.syms[n] = sym as u16;
                n += 1;
                code += 1;
            }
            sym += 1;
        }
        c.limit[len] = (code as u64) << (32 - len);
        code <<= 1;
        len += 1;
    }
    c
}

static CODE: Canonical = canonical();

/// Codes of at most 8 bits (the letters, digits and common punctuation), by the 8 bits a code
/// starts: `len << 8 | symbol`, or 0 for a longer code. One lookup instead of the search by
/// length for most symbols.
static SHORT: [u16; 256] = short_codes();

const fn short_codes() -> [u16; 256] {
    let code = canonical();
    let mut t = [0u16; 256];
    let mut sym = 0;
    while sym < 256 {
        let len = LEN[sym] as usize;
        if len <= 8 {
            let base = (code.codes[sym] as usize) << (8 - len);
            let mut k = 0;
            while k < 1 << (8 - len) {
                t[base + k] = (len as u16) << 8 | sym as u16;
                k += 1;
            }
        }
        sym += 1;
    }
    t
}

/// The length in bytes of `src` Huffman-encoded.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|b| LEN[*b as usize] as usize).sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman-encoded, padded with the most significant bits of EOS (ones). Output
/// goes out 32 bits at a time through a small stack buffer, not byte by byte.
pub fn encode(src: &[u8], dst: &mut impl BufMut) {
    let mut chunk = [0u8; 64];
    let mut at = 0;
    // Pending bits, right-aligned; at most 31 + 30 of them.
    let mut acc: u64 = 0;
    let mut n: u32 = 0;
    for b in src {
        let len = LEN[*b as usize] as u32;
        acc = (acc << len) | CODE.codes[*b as usize] as u64;
        n += len;
        if n >= 32 {
            n -= 32;
            chunk[at..at + 4].copy_from_slice(&((acc >> n) as u32).to_be_bytes());
            at += 4;
            acc &= (1 << n) - 1;
            if at == chunk.len() {
                dst.put_slice(&chunk);
                at = 0;
            }
        }
    }
    while n >= 8 {
        n -= 8;
        chunk[at] = (acc >> n) as u8;
        at += 1;
    }
    if n > 0 {
        chunk[at] = ((acc << (8 - n)) as u8) | (0xff >> n);
        at += 1;
    }
    dst.put_slice(&chunk[..at]);
}

/// Why a Huffman-encoded string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("Huffman-encoded string contains EOS")]
    Eos,
    #[error("Huffman padding longer than 7 bits or not all ones")]
    Padding,
}

/// Appends the decoded `src` to `dst`, through a small stack buffer.
pub fn decode(src: &[u8], dst: &mut bytes::BytesMut) -> Result<(), HuffmanError> {
    dst.reserve(src.len() * 8 / 5);
    let mut chunk = [0u8; 64];
    let mut at = 0;
    // Unread bits, left-aligned.
    let mut acc: u64 = 0;
    let mut n: u32 = 0;
    let mut i = 0;
    loop {
        while n <= 56 && i < src.len() {
            acc |= (src[i] as u64) << (56 - n);
            n += 8;
            i += 1;
        }
        if at == chunk.len() {
            dst.put_slice(&chunk);
            at = 0;
        }
        if n >= 8 {
            let short = SHORT[(acc >> 56) as usize];
            if short != 0 {
                chunk[at] = short as u8;
                at += 1;
                acc <<= short >> 8;
                n -= (short >> 8) as u32;
                continue;
            }
        }
        if n == 0 {
            dst.put_slice(&chunk[..at]);
            return Ok(());
        }
        let peek = acc >> 32;
        let mut len = 9;
        while len < 30 && peek >= CODE.limit[len] {
            len += 1;
        }
        if n < 8 || len as u32 > n {
            // What is left is padding: fewer than 8 bits, all ones (no code is all ones, so
            // a real code never ends up here; a code shorter than 8 bits would have been
            // found above only with 8 bits to look at, so it is looked for here).
            if let Some((sym, len)) = short_tail(acc, n) {
                chunk[at] = sym;
                at += 1;
                acc <<= len;
                n -= len;
                continue;
            }
            let pad = (acc >> (64 - n)) as u32;
            return if n < 8 && pad == (1 << n) - 1 {
                dst.put_slice(&chunk[..at]);
                Ok(())
            } else {
                Err(HuffmanError::Padding)
            };
        }
        let at_code = CODE.offset[len] as u32 + ((peek >> (32 - len)) as u32 - CODE.first[len]);
        let sym = CODE.syms[at_code as usize];
        if sym == EOS {
            return Err(HuffmanError::Eos);
        }
        chunk[at] = sym as u8;
        at += 1;
        acc <<= len;
        n -= len as u32;
    }
}

/// With fewer than 8 bits left: the code of at most `n` bits they start with, if any.
fn short_tail(acc: u64, n: u32) -> Option<(u8, u32)> {
    if n >= 8 {
        return None;
    }
    // The bits past the input are zeros in `acc`; a code that fits within `n` bits is found
    // whatever they are.
    let short = SHORT[(acc >> 56) as usize];
    let len = (short >> 8) as u32;
    (short != 0 && len <= n).then_some((short as u8, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_codes_are_the_rfcs() {
        // Spot checks against RFC 7541 Appendix B.
        for (sym, code, len) in [
            (0usize, 0x1ff8u32, 13u8),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'z' as usize, 0x7b, 7),
            (b'~' as usize, 0x1ffd, 13),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ] {
            assert_eq!((CODE.codes[sym], LEN[sym]), (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for s in [&b""[..], b"a", b"www.example.com", b"no-cache", &all] {
            let mut enc = Vec::new();
            encode(s, &mut enc);
            assert_eq!(enc.len(), encoded_len(s));
            let mut dec = bytes::BytesMut::new();
            decode(&enc, &mut dec).unwrap();
            assert_eq!(dec, s);
        }
    }

    #[test]
    fn rfc_example_strings() {
        // RFC 7541 C.4.1 and C.4.2.
        let mut out = Vec::new();
        encode(b"www.example.com", &mut out);
        assert_eq!(
            out,
            [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]
        );
        out.clear();
        encode(b"no-cache", &mut out);
        assert_eq!(out, [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]);
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        let mut out = bytes::BytesMut::new();
        // 'a' (00011) then three zero bits: padding must be ones.
        assert_eq!(decode(&[0b0001_1000], &mut out), Err(HuffmanError::Padding));
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(
            decode(&[0b0001_1111, 0xff], &mut out),
            Err(HuffmanError::Padding)
        );
        // EOS itself: 30 ones (and two bits of padding).
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
        // Correct padding.
        out.clear();
        decode(&[0b0001_1111], &mut out).unwrap();
        assert_eq!(&out[..], b"a");
    }

    #[test]
    fn random_strings_round_trip() {
        // Lengths across the decoder's 64-byte output chunk, text (short codes) and any byte
        // (long ones), mixed so that strings end on short and long codes with every padding.
        let mut rng = fastrand::Rng::with_seed(11);
        for len in 0..400 {
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.u8(..4) {
                    0 => rng.u8(..),
                    _ => rng.u8(b'a'..=b'z'),
                })
                .collect();
            let mut enc = Vec::new();
            encode(&s, &mut enc);
            let mut dec = bytes::BytesMut::from(&b"prefix"[..]);
            decode(&enc, &mut dec).unwrap();
            assert_eq!(&dec[..6], b"prefix");
            assert_eq!(&dec[6..], &s[..], "length {len}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut out = bytes::BytesMut::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            out.clear();
            let _ = decode(&bytes, &mut out);
        }
    }
}
