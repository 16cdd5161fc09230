//! RFC 7541 Appendix C's examples, round trips through both sides, and bad input.

use bytes::{Bytes, BytesMut};

use super::*;

fn hex(s: &str) -> Bytes {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

fn decode(d: &mut Decoder, block: &Bytes) -> Vec<(String, String)> {
    let mut out = Vec::new();
    d.decode(block, 1 << 20, |f, _| {
        out.push((
            String::from_utf8(f.name.to_vec()).unwrap(),
            String::from_utf8(f.value.to_vec()).unwrap(),
        ))
    })
    .unwrap();
    out
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn encode(e: &mut Encoder, list: &[(&str, &str)]) -> Bytes {
    let mut out = BytesMut::new();
    e.begin(&mut out);
    for (n, v) in list {
        e.field(n.as_bytes(), v.as_bytes(), false, &mut out);
    }
    out.freeze()
}

const REQ1: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ2: [(&str, &str); 5] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: [(&str, &str); 5] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];

#[test]
fn c2_single_representations() {
    let mut d = Decoder::default();
    let got = decode(
        &mut d,
        &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
    );
    assert_eq!(got, fields(&[("custom-key", "custom-header")]));
    assert_eq!(d.table().size(), 55);
    let mut d = Decoder::default();
    let got = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468"));
    assert_eq!(got, fields(&[(":path", "/sample/path")]));
    assert_eq!(d.table().len(), 0);
    let mut seen = Vec::new();
    Decoder::default()
        .decode(
            &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"),
            1 << 20,
            |f, _| seen.push((f.name.clone(), f.value.clone(), f.never_indexed)),
        )
        .unwrap();
    assert_eq!(&seen[0].0[..], b"password");
    assert_eq!(&seen[0].1[..], b"secret");
    assert!(seen[0].2);
    assert_eq!(decode(&mut d, &hex("82")), fields(&[(":method", "GET")]));
}

#[test]
fn c3_requests_without_huffman() {
    let mut d = Decoder::default();
    let got = decode(
        &mut d,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
    );
    assert_eq!(got, fields(&REQ1));
    assert_eq!(d.table().size(), 57);
    let got = decode(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865"));
    assert_eq!(got, fields(&REQ2));
    assert_eq!(d.table().size(), 110);
    let got = decode(
        &mut d,
        &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"),
    );
    assert_eq!(got, fields(&REQ3));
    assert_eq!(d.table().size(), 164);
}

#[test]
fn c4_requests_with_huffman_both_ways() {
    let blocks = [
        hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        hex("8286 84be 5886 a8eb 1064 9cbf"),
        hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
    ];
    let reqs: [&[(&str, &str)]; 3] = [&REQ1, &REQ2, &REQ3];
    let mut d = Decoder::default();
    let mut e = Encoder::new();
    for (block, req) in blocks.iter().zip(reqs) {
        assert_eq!(decode(&mut d, block), fields(req));
        // The encoder makes the same choices as the RFC's example.
        assert_eq!(encode(&mut e, req), block);
    }
    assert_eq!(d.table().size(), 164);
    assert_eq!(e.table().size(), 164);
}

#[test]
fn c5_responses_evict_within_a_256_byte_table() {
    // RFC 7541 C.5.1 and C.5.2, built field by field.
    let mut block = BytesMut::new();
    for (index, value) in [
        (8u8, "302"),
        (24, "private"),
        (33, "Mon, 21 Oct 2013 20:13:21 GMT"),
        (46, "https://www.example.com"),
    ] {
        block.extend_from_slice(&[0x40 | index, value.len() as u8]);
        block.extend_from_slice(value.as_bytes());
    }
    let mut d = Decoder::new(256);
    decode(&mut d, &block.freeze());
    assert_eq!(d.table().size(), 222);
    let got = decode(&mut d, &hex("4803 3330 37c1 c0bf"));
    assert_eq!(
        got,
        fields(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ])
    );
    // `:status: 302` was evicted to make room for `:status: 307`.
    assert_eq!(d.table().size(), 222);
    assert_eq!(d.table().len(), 4);
}

#[test]
fn encoder_and_decoder_agree_over_many_blocks() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    for i in 0..500 {
        let id = format!("{i:036}");
        let big = "v".repeat(i * 7 % 3000);
        let list = [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("x-request-id", id.as_str()),
            ("server", "envoy"),
            ("x-big", big.as_str()),
            (
                "x-envoy-upstream-service-time",
                if i % 2 == 0 { "0" } else { "1" },
            ),
        ];
        let block = encode(&mut e, &list);
        assert_eq!(decode(&mut d, &block), fields(&list), "block {i}");
        assert!(d.table().size() <= 4096);
        if i == 250 {
            // The peer shrinks its table, then allows it again.
            e.set_max_size(100);
            e.set_max_size(4096);
        }
    }
    // No field is in the table twice.
    for name in [&b"x-request-id"[..], b"server"] {
        let n = e.table().iter().filter(|(n, _)| &n[..] == name).count();
        assert!(n <= 1, "{n} entries for {name:?}");
    }

    // Steady state: the first request id goes into the table so that its name can be named by
    // index; later ones do not (their values never repeat), and `server` is one entry.
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    let mut sizes = Vec::new();
    for i in 0..100 {
        let id = format!("{i:036}");
        let list = [("x-request-id", id.as_str()), ("server", "envoy")];
        let block = encode(&mut e, &list);
        assert_eq!(decode(&mut d, &block), fields(&list), "block {i}");
        sizes.push(block.len());
    }
    let count = |name: &[u8]| e.table().iter().filter(|(n, _)| &n[..] == name).count();
    assert_eq!(count(b"x-request-id"), 1);
    assert_eq!(count(b"server"), 1);
    // Later blocks: the id's name by dynamic index (2 bytes with a 4-bit prefix), its length
    // (1) and its 36 bytes as they are; `server` indexed (1).
    assert!(sizes[1..].iter().all(|&n| n == 40), "{sizes:?}");
}

#[test]
fn remembered_positions_never_send_a_stale_index() {
    // Blocks drawn from a small pool of fields in shifting orders, with large values that
    // evict, table resizes, and fields that turn sensitive at a position that was indexed:
    // whatever the encoder remembers, the peer must decode exactly what was sent.
    let pool: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/".into()),
        (":path".into(), "/a/b".into()),
        (":path".into(), "/index.html".into()),
        (":authority".into(), "svc.local".into()),
        ("x-request-id".into(), "0".into()),
        ("server".into(), "envoy".into()),
        ("server".into(), "sluice".into()),
        ("content-length".into(), "2".into()),
        ("cookie".into(), "a=b".into()),
        ("cookie".into(), "c=ddddddddddddddddddddddddd".into()),
        ("x-big".into(), "v".repeat(1500)),
        ("x-big".into(), "w".repeat(1700)),
        ("authorization".into(), "Bearer abc".into()),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    for i in 0..3000 {
        if i % 97 == 0 {
            e.set_max_size([0, 64, 200, 4096][next(4)]);
        }
        let len = 1 + next(8);
        let start = next(pool.len());
        let mut list = Vec::new();
        let mut out = BytesMut::new();
        e.begin(&mut out);
        for k in 0..len {
            // Mostly the same order as last time, sometimes shifted or replaced.
            let (n, v) = &pool[(start + k + next(3) / 2) % pool.len()];
            let v = if n == "x-request-id" {
                format!("{i}")
            } else {
                v.clone()
            };
            let sensitive = n == "authorization" || next(10) == 0;
            e.field(n.as_bytes(), v.as_bytes(), sensitive, &mut out);
            // A field the static table holds whole is its index even when sensitive.
            let whole = matches!(
                table::find_static(n.as_bytes(), v.as_bytes()),
                Some((_, Some(_)))
            );
            list.push((n.clone(), v, sensitive && !whole));
        }
        let mut got = Vec::new();
        d.decode(&out.freeze(), 1 << 20, |f, _| {
            got.push((
                String::from_utf8(f.name.to_vec()).unwrap(),
                String::from_utf8(f.value.to_vec()).unwrap(),
                f.never_indexed,
            ))
        })
        .unwrap_or_else(|err| panic!("block {i}: {err}"));
        assert_eq!(got, list, "block {i}");
    }
}

#[test]
fn a_repeated_block_is_all_indices() {
    let list = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "svc.local:8080"),
        (":path", "/"),
        ("x-forwarded-proto", "http"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ];
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    let first = encode(&mut e, &list);
    assert_eq!(decode(&mut d, &first), fields(&list));
    for _ in 0..3 {
        let again = encode(&mut e, &list);
        assert_eq!(decode(&mut d, &again), fields(&list));
        assert_eq!(again.len(), list.len(), "{again:?}");
    }
    // A path the static table lacks is a literal after the name's index; "/" is then found
    // whole again, not as a literal.
    let other = [(":path", "/x")];
    let mut e = Encoder::new();
    let a = encode(&mut e, &other);
    let b = encode(&mut e, &[(":path", "/")]);
    assert_eq!(&b[..], &[0x84]);
    assert_eq!(a[0], 0x04);
}

#[test]
fn fields_from_the_tables_come_parsed_and_checked() {
    /// Each field's name, and what the tables vouched for: the parsed name and value.
    type Seen = (String, Option<String>, Option<String>);
    fn fields_of(d: &mut Decoder, block: &[u8]) -> Vec<Seen> {
        let mut out = Vec::new();
        d.decode(&Bytes::copy_from_slice(block), 1 << 20, |f, known| {
            out.push((
                String::from_utf8(f.name.to_vec()).unwrap(),
                known.name.map(|n| n.as_str().to_string()),
                known
                    .value
                    .map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap()),
            ))
        })
        .unwrap();
        out
    }
    let seen = |name: &str, n: Option<&str>, v: Option<&str>| -> Seen {
        (name.into(), n.map(String::from), v.map(String::from))
    };
    let mut d = Decoder::default();
    // Literals with incremental indexing, literal names: "x-a: 1", "X-Up: 1" (uppercase),
    // "x-b: <DEL>" (an invalid value). Each is parsed as it is inserted.
    let mut block = vec![0x40, 3];
    block.extend_from_slice(b"x-a");
    block.extend_from_slice(&[1, b'1', 0x40, 4]);
    block.extend_from_slice(b"X-Up");
    block.extend_from_slice(&[1, b'1', 0x40, 3]);
    block.extend_from_slice(b"x-b");
    block.extend_from_slice(&[1, 0x7f]);
    let inserted = vec![
        seen("x-a", Some("x-a"), Some("1")),
        // The uppercase name is not vouched for: the consumer checks it and refuses it.
        seen("X-Up", None, None),
        // The name is fine, the value is not: only the name is vouched for.
        seen("x-b", Some("x-b"), None),
    ];
    assert_eq!(fields_of(&mut d, &block), inserted);
    // The same by index (newest first: 62 = x-b, 63 = X-Up, 64 = x-a).
    assert_eq!(
        fields_of(&mut d, &[0x80 | 64, 0x80 | 63, 0x80 | 62]),
        inserted
    );
    // A dynamic name with a literal value: the name only.
    assert_eq!(
        fields_of(&mut d, &[0x0f, 64 - 15, 1, b'9']),
        vec![seen("x-a", Some("x-a"), None)]
    );
    // A static name with a literal value (content-length, index 28); a pseudo-header's
    // (index 4, :path), which is not a regular name; a literal name, nothing known.
    let mut block = vec![0x0f, 28 - 15, 1, b'2', 0x04, 1, b'/', 0x00, 3];
    block.extend_from_slice(b"x-z");
    block.extend_from_slice(&[1, b'1']);
    assert_eq!(
        fields_of(&mut d, &block),
        vec![
            seen("content-length", Some("content-length"), None),
            seen(":path", None, None),
            seen("x-z", None, None),
        ]
    );
    // The table emptied by a size update (to 0, then back to 4,096) and refilled: index 62 is
    // the new entry.
    let mut block = vec![0x20, 0x3f, 0xe1, 0x1f, 0x40, 3];
    block.extend_from_slice(b"x-c");
    block.extend_from_slice(&[1, b'3', 0x80 | 62]);
    let x_c = seen("x-c", Some("x-c"), Some("3"));
    assert_eq!(fields_of(&mut d, &block), vec![x_c.clone(), x_c]);
    assert_eq!(d.table().len(), 1);
}

#[test]
fn sensitive_fields_are_never_indexed() {
    let mut e = Encoder::new();
    let mut out = BytesMut::new();
    e.begin(&mut out);
    e.field(b"authorization", b"Bearer abc", true, &mut out);
    let mut seen = Vec::new();
    Decoder::default()
        .decode(&out.freeze(), 1 << 20, |f, _| seen.push(f.never_indexed))
        .unwrap();
    assert!(seen[0]);
    assert_eq!(e.table().len(), 0);
}

#[test]
fn table_size_updates_are_announced_and_bounded() {
    let mut e = Encoder::new();
    e.set_max_size(0);
    let block = encode(&mut e, &[("x-a", "1")]);
    assert_eq!(block[0], 0x20, "size update to 0 first");
    let mut d = Decoder::default();
    assert_eq!(decode(&mut d, &block), fields(&[("x-a", "1")]));
    assert_eq!(d.table().max(), 0);
    // Over what this side allows, or after a field: errors.
    let mut d = Decoder::new(100);
    let mut over = BytesMut::new();
    over.extend_from_slice(&[0x3f, 0xe1, 0x1f]); // 4096
    assert_eq!(
        d.decode(&over.freeze(), 1 << 20, |_, _| {}),
        Err(DecodeError::SizeUpdateTooLarge(4096, 100))
    );
    assert_eq!(
        Decoder::default().decode(&hex("8220"), 1 << 20, |_, _| {}),
        Err(DecodeError::LateSizeUpdate)
    );
}

#[test]
fn bad_blocks_are_errors_not_panics() {
    for (block, want) in [
        ("80", DecodeError::BadIndex(0)),
        ("be", DecodeError::BadIndex(62)),
        ("ff", DecodeError::Truncated),
        ("ff ff ff ff ff 0f", DecodeError::IntegerOverflow),
        ("40 05 61", DecodeError::Truncated),
        ("00", DecodeError::Truncated),
        (
            "40 81 ff 01 61",
            DecodeError::Huffman(huffman::HuffmanError::Padding),
        ),
    ] {
        assert_eq!(
            Decoder::default().decode(&hex(block), 1 << 20, |_, _| {}),
            Err(want),
            "{block}"
        );
    }
    // A small block may not expand past the list limit (each indexed field counts 32 + its
    // name and value).
    let many = Bytes::from(vec![0x82u8; 1000]);
    assert_eq!(
        Decoder::default().decode(&many, 16 * 1024, |_, _| {}),
        Err(DecodeError::ListTooLarge(16 * 1024))
    );
    // Random input: any result, never a panic.
    let mut rng = fastrand::Rng::with_seed(7);
    for len in 0..2000 {
        let block: Vec<u8> = (0..len % 64).map(|_| rng.u8(..)).collect();
        let _ = Decoder::default().decode(&Bytes::from(block), 1 << 16, |_, _| {});
    }
}

#[test]
fn every_static_entry_is_found_by_name_and_value() {
    for (i, (n, v)) in table::STATIC.iter().enumerate() {
        let first = table::STATIC.iter().position(|(m, _)| m == n).unwrap() + 1;
        assert_eq!(
            table::find_static(n.as_bytes(), v.as_bytes()),
            Some((first, Some(i + 1))),
            "{n}: {v}"
        );
    }
    assert_eq!(table::find_static(b":status", b"201"), Some((8, None)));
    assert_eq!(table::find_static(b"x-custom", b""), None);
}
