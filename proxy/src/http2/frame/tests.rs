//! Frames written and read back, frames that break the protocol, and a conversation with the
//! `h2` crate's client over a real socket: this codec's frames and HPACK blocks on one side,
//! an independent implementation on the other.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::http2::hpack;

fn read_all(r: &mut Reader, mut buf: BytesMut) -> Vec<Result<Frame, FrameError>> {
    let mut out = Vec::new();
    loop {
        match r.next(&mut buf) {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

fn reader() -> Reader {
    Reader::new(DEFAULT_MAX_FRAME_SIZE, 64 * 1024)
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    head(&mut b, payload.len(), kind, flags, stream);
    b.put_slice(payload);
    b
}

#[test]
fn every_frame_written_reads_back() {
    let mut out = BytesMut::new();
    write_data_head(&mut out, 1, 5, true);
    out.put_slice(b"hello");
    write_headers(&mut out, 3, b"block", false, DEFAULT_MAX_FRAME_SIZE);
    let s = Settings {
        header_table_size: Some(0),
        enable_push: Some(false),
        max_concurrent_streams: Some(100),
        initial_window_size: Some(1 << 20),
        max_frame_size: Some(32_768),
        max_header_list_size: Some(65_536),
        enable_connect_protocol: Some(true),
    };
    write_settings(&mut out, &s);
    write_settings(&mut out, &Settings::default());
    write_settings_ack(&mut out);
    write_ping(&mut out, true, *b"12345678");
    write_goaway(&mut out, 7, ErrorCode::ENHANCE_YOUR_CALM, b"calm");
    write_rst_stream(&mut out, 5, ErrorCode::CANCEL);
    write_window_update(&mut out, 0, 65_535);
    let got: Vec<Frame> = read_all(&mut reader(), out)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            Frame::Data {
                stream: 1,
                data: Bytes::from_static(b"hello"),
                end_stream: true,
                flow_len: 5
            },
            Frame::Headers {
                stream: 3,
                block: Bytes::from_static(b"block"),
                end_stream: false,
                priority: None
            },
            Frame::Settings(s),
            Frame::Settings(Settings::default()),
            Frame::SettingsAck,
            Frame::Ping {
                ack: true,
                data: *b"12345678"
            },
            Frame::GoAway {
                last_stream: 7,
                code: ErrorCode::ENHANCE_YOUR_CALM,
                debug: Bytes::from_static(b"calm")
            },
            Frame::RstStream {
                stream: 5,
                code: ErrorCode::CANCEL
            },
            Frame::WindowUpdate {
                stream: 0,
                increment: 65_535
            },
        ]
    );
}

#[test]
fn frames_arriving_in_pieces_are_read_once_whole() {
    let mut whole = BytesMut::new();
    write_data_head(&mut whole, 1, 3, false);
    whole.put_slice(b"abc");
    let mut r = reader();
    let mut buf = BytesMut::new();
    for (i, b) in whole.iter().enumerate() {
        buf.put_u8(*b);
        let f = r.next(&mut buf).unwrap();
        assert_eq!(f.is_some(), i == whole.len() - 1, "after byte {i}");
    }
}

#[test]
fn a_header_block_is_assembled_from_its_continuations() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut out = BytesMut::new();
    write_headers(&mut out, 1, &block, true, DEFAULT_MAX_FRAME_SIZE);
    // 16 KiB + 16 KiB + the rest: HEADERS and two CONTINUATIONs.
    assert_eq!(out.len(), 40_000 + 3 * 9);
    let got = read_all(&mut reader(), out);
    assert_eq!(
        got,
        vec![Ok(Frame::Headers {
            stream: 1,
            block: Bytes::from(block),
            end_stream: true,
            priority: None
        })]
    );
    // Interrupted by another frame, or on another stream: a connection error.
    let mut bad = raw(kind::HEADERS, 0, 1, b"ab");
    bad.extend_from_slice(&raw(kind::DATA, 0, 1, b"x"));
    assert!(matches!(
        read_all(&mut reader(), bad).pop(),
        Some(Err(Connection(ErrorCode::PROTOCOL_ERROR, _)))
    ));
    let mut bad = raw(kind::HEADERS, 0, 1, b"ab");
    bad.extend_from_slice(&raw(kind::CONTINUATION, flag::END_HEADERS, 3, b"c"));
    assert!(matches!(
        read_all(&mut reader(), bad).pop(),
        Some(Err(Connection(ErrorCode::PROTOCOL_ERROR, _)))
    ));
    // A CONTINUATION flood ends the connection once the block passes the limit.
    let mut flood = raw(kind::HEADERS, 0, 1, &[0; 1000]);
    for _ in 0..100 {
        flood.extend_from_slice(&raw(kind::CONTINUATION, 0, 1, &[0; 1000]));
    }
    assert_eq!(
        read_all(&mut Reader::new(DEFAULT_MAX_FRAME_SIZE, 50_000), flood).pop(),
        Some(Err(Connection(
            ErrorCode::ENHANCE_YOUR_CALM,
            "header block too large"
        )))
    );
}

#[test]
fn padding_and_priority_are_removed() {
    // PADDED + PRIORITY HEADERS: pad length 3, dependency on stream 1 (exclusive), weight 15.
    let mut p = vec![3u8, 0x80, 0, 0, 1, 15];
    p.extend_from_slice(b"blk");
    p.extend_from_slice(&[0, 0, 0]);
    let f = read_all(
        &mut reader(),
        raw(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            5,
            &p,
        ),
    );
    assert_eq!(
        f,
        vec![Ok(Frame::Headers {
            stream: 5,
            block: Bytes::from_static(b"blk"),
            end_stream: false,
            priority: Some(Priority {
                dependency: 1,
                exclusive: true,
                weight: 15
            })
        })]
    );
    // Padded DATA counts its padding against flow control.
    let f = read_all(
        &mut reader(),
        raw(kind::DATA, flag::PADDED, 1, &[2, b'x', 0, 0]),
    );
    assert_eq!(
        f,
        vec![Ok(Frame::Data {
            stream: 1,
            data: Bytes::from_static(b"x"),
            end_stream: false,
            flow_len: 4
        })]
    );
}

/// What a test expects of the last thing read.
type Check = Box<dyn Fn(&Option<Result<Frame, FrameError>>) -> bool>;

#[test]
fn frames_that_break_the_protocol() {
    let conn = |code| move |r: &Option<Result<Frame, FrameError>>| matches!(r, Some(Err(Connection(c, _))) if *c == code);
    let cases: Vec<(BytesMut, Check)> = vec![
        // Over SETTINGS_MAX_FRAME_SIZE.
        (
            raw(kind::DATA, 0, 1, &[0; 16_385]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        // Stream frames on stream 0, connection frames on a stream.
        (
            raw(kind::DATA, 0, 0, b"x"),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        (
            raw(kind::HEADERS, 4, 0, b""),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        (
            raw(kind::SETTINGS, 0, 1, b""),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        (
            raw(kind::PING, 0, 1, &[0; 8]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        (
            raw(kind::GOAWAY, 0, 3, &[0; 8]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        // Sizes fixed by the protocol.
        (
            raw(kind::PING, 0, 0, &[0; 7]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        (
            raw(kind::RST_STREAM, 0, 1, &[0; 3]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        (
            raw(kind::SETTINGS, 0, 0, &[0; 5]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        (
            raw(kind::SETTINGS, 1, 0, &[0; 6]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        (
            raw(kind::WINDOW_UPDATE, 0, 0, &[0; 3]),
            Box::new(conn(ErrorCode::FRAME_SIZE_ERROR)),
        ),
        // Padding as long as the payload.
        (
            raw(kind::DATA, flag::PADDED, 1, &[3, 0, 0]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        // SETTINGS values out of range.
        (
            raw(kind::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        (
            raw(kind::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            Box::new(conn(ErrorCode::FLOW_CONTROL_ERROR)),
        ),
        (
            raw(kind::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        // A CONTINUATION out of nowhere.
        (
            raw(kind::CONTINUATION, flag::END_HEADERS, 1, b""),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        // A zero window increment: on the connection, a connection error...
        (
            raw(kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Box::new(conn(ErrorCode::PROTOCOL_ERROR)),
        ),
        // ...on a stream, that stream's.
        (
            raw(kind::WINDOW_UPDATE, 0, 7, &[0; 4]),
            Box::new(|r: &Option<Result<Frame, FrameError>>| {
                matches!(r, Some(Err(Stream(7, ErrorCode::PROTOCOL_ERROR, _))))
            }),
        ),
        // A stream that depends on itself.
        (
            raw(kind::PRIORITY, 0, 3, &[0, 0, 0, 3, 16]),
            Box::new(|r: &Option<Result<Frame, FrameError>>| {
                matches!(r, Some(Err(Stream(3, ErrorCode::PROTOCOL_ERROR, _))))
            }),
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let got = read_all(&mut reader(), bytes).pop();
        assert!(want(&got), "case {i}: {got:?}");
    }
    // Unknown frame types and settings are ignored.
    let mut b = raw(0xfa, 0xff, 9, b"whatever");
    b.extend_from_slice(&raw(kind::SETTINGS, 0, 0, &[0xff, 0xff, 0, 0, 0, 1]));
    assert_eq!(
        read_all(&mut reader(), b),
        vec![
            Ok(Frame::Unknown { kind: 0xfa }),
            Ok(Frame::Settings(Settings::default()))
        ]
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    for len in 0..3000 {
        // Every other input has small bytes only: small lengths and known types, so frames
        // are often whole.
        let mask = if len % 2 == 0 { 0x0f } else { 0xff };
        let bytes: Vec<u8> = (0..len % 300).map(|_| rng.u8(..) & mask).collect();
        let _ = read_all(&mut reader(), BytesMut::from(&bytes[..]));
    }
}

/// The `h2` crate's client sends a POST with a body and gets this codec's response: SETTINGS
/// both ways, the request's HEADERS decoded with `hpack::Decoder`, its DATA taken in (and its
/// window given back), a response encoded with `hpack::Encoder`, a body split over two DATA
/// frames, and trailers.
#[tokio::test]
async fn the_h2_crate_client_talks_to_this_codec() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = h2::client::handshake(s).await.unwrap();
        let driver = tokio::spawn(conn);
        let mut tx = tx.ready().await.unwrap();
        let req = http::Request::post("http://svc.internal/upload?x=1")
            .header("x-custom", "yes")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut body) = tx.send_request(req, false).unwrap();
        body.send_data(Bytes::from(vec![b'a'; 70_000]), true)
            .unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut recv = resp.into_body();
        let mut data = Vec::new();
        while let Some(d) = recv.data().await {
            let d = d.unwrap();
            recv.flow_control().release_capacity(d.len()).unwrap();
            data.extend_from_slice(&d);
        }
        let trailers = recv.trailers().await.unwrap();
        driver.abort();
        (status, headers, data, trailers)
    });

    let (mut s, _) = l.accept().await.unwrap();
    let mut buf = BytesMut::new();
    while buf.len() < PREFACE.len() {
        s.read_buf(&mut buf).await.unwrap();
    }
    assert_eq!(&buf[..PREFACE.len()], PREFACE);
    let _ = buf.split_to(PREFACE.len());
    let mut out = BytesMut::new();
    write_settings(
        &mut out,
        &Settings {
            max_concurrent_streams: Some(10),
            ..Default::default()
        },
    );
    s.write_all(&out).await.unwrap();
    out.clear();

    let mut r = reader();
    let mut dec = hpack::Decoder::default();
    let mut enc = hpack::Encoder::new();
    let (mut fields, mut body, mut stream_id) = (Vec::new(), 0usize, 0);
    let mut done = false;
    while !done {
        let f = match r.next(&mut buf).unwrap() {
            Some(f) => f,
            None => {
                if s.read_buf(&mut buf).await.unwrap() == 0 {
                    break;
                }
                continue;
            }
        };
        match f {
            Frame::Settings(_) => write_settings_ack(&mut out),
            Frame::Headers { stream, block, .. } => {
                stream_id = stream;
                dec.decode(&block, 1 << 16, |f, _| {
                    fields.push((
                        String::from_utf8(f.name.to_vec()).unwrap(),
                        String::from_utf8(f.value.to_vec()).unwrap(),
                    ))
                })
                .unwrap();
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => {
                body += data.len();
                // Give the window back so the rest of the 70,000 bytes can come.
                write_window_update(&mut out, 0, flow_len);
                write_window_update(&mut out, stream, flow_len);
                if end_stream && !done {
                    done = true;
                    let mut block = BytesMut::new();
                    enc.begin(&mut block);
                    for (n, v) in [(":status", "201"), ("content-type", "text/plain")] {
                        enc.field(n.as_bytes(), v.as_bytes(), false, &mut block);
                    }
                    write_headers(&mut out, stream, &block, false, DEFAULT_MAX_FRAME_SIZE);
                    for part in [&b"got "[..], body.to_string().as_bytes()] {
                        write_data_head(&mut out, stream, part.len(), false);
                        out.put_slice(part);
                    }
                    let mut block = BytesMut::new();
                    enc.begin(&mut block);
                    enc.field(b"grpc-status", b"0", false, &mut block);
                    write_headers(&mut out, stream, &block, true, DEFAULT_MAX_FRAME_SIZE);
                }
            }
            _ => {}
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
            out.clear();
        }
    }
    let (status, headers, data, trailers) = client.await.unwrap();
    let want = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "svc.internal"),
        (":path", "/upload?x=1"),
        ("x-custom", "yes"),
        ("te", "trailers"),
    ];
    for (n, v) in want {
        assert!(
            fields.iter().any(|(fn_, fv)| fn_ == n && fv == v),
            "{n}: {v} not in {fields:?}"
        );
    }
    assert_eq!(stream_id, 1);
    assert_eq!(body, 70_000);
    assert_eq!(status, 201);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(data, b"got 70000");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}
