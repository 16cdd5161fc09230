//! HPACK's cost per proxied h2c exchange with Sluice's own codec (`sluice::http2::hpack`, not
//! yet on the data path): the header blocks of the bench's h2c scenario, decoded and encoded as
//! the proxy handles them on its two connections. The request comes in (decode), goes upstream
//! with `x-forwarded-proto` and a fresh `x-request-id` (encode); the response comes back
//! (decode) and goes down with `server` and `x-envoy-upstream-service-time` (encode). The peers'
//! blocks are made beforehand and not timed.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice::http2::hpack::{Decoder, Encoder};

pub struct Measured {
    pub exchanges: usize,
    pub per_exchange: Duration,
    /// Bytes of the four blocks of one steady-state exchange.
    pub block_bytes: [usize; 4],
}

fn block(e: &mut Encoder, fields: &[(&str, &str)]) -> Bytes {
    let mut out = BytesMut::new();
    e.begin(&mut out);
    for (n, v) in fields {
        e.field(n.as_bytes(), v.as_bytes(), false, &mut out);
    }
    out.freeze()
}

pub fn measure(exchanges: usize) -> Measured {
    // What the client and the upstream send, as the bench's peers send it.
    let mut client = Encoder::new();
    let mut upstream = Encoder::new();
    let requests: Vec<Bytes> = (0..exchanges)
        .map(|_| {
            block(
                &mut client,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "127.0.0.1:10000"),
                    (":path", "/small"),
                ],
            )
        })
        .collect();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let responses: Vec<Bytes> = (0..exchanges)
        .map(|_| {
            block(
                &mut upstream,
                &[(":status", "200"), ("content-length", "2"), ("date", &date)],
            )
        })
        .collect();
    let ids: Vec<String> = (0..exchanges)
        .map(|i| {
            format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                i,
                i % 65536,
                i % 4096,
                i % 4096,
                i
            )
        })
        .collect();
    let mut sizes = [0; 4];
    let t0 = Instant::now();
    timed_exchanges(&requests, &responses, &ids, &mut sizes);
    Measured {
        exchanges,
        per_exchange: t0.elapsed() / exchanges as u32,
        block_bytes: sizes,
    }
}

/// The timed part (a function of its own, for `callgrind --toggle-collect`).
#[inline(never)]
fn timed_exchanges(
    requests: &[Bytes],
    responses: &[Bytes],
    ids: &[String],
    sizes: &mut [usize; 4],
) {
    let (mut down_dec, mut down_enc) = (Decoder::default(), Encoder::new());
    let (mut up_dec, mut up_enc) = (Decoder::default(), Encoder::new());
    let mut fields = Vec::with_capacity(8);
    let mut out = BytesMut::with_capacity(4096);
    for ((rq, rs), id) in requests.iter().zip(responses).zip(ids) {
        let request_out = [
            (&b"x-forwarded-proto"[..], &b"http"[..]),
            (b"x-request-id", id.as_bytes()),
        ];
        relay(
            &mut down_dec,
            &mut up_enc,
            rq,
            &request_out,
            &mut fields,
            &mut out,
        );
        let up_len = out.len();
        let response_out = [
            (&b"server"[..], &b"envoy"[..]),
            (b"x-envoy-upstream-service-time", b"0"),
        ];
        relay(
            &mut up_dec,
            &mut down_enc,
            rs,
            &response_out,
            &mut fields,
            &mut out,
        );
        *sizes = [rq.len(), up_len, rs.len(), out.len()];
    }
}

/// One message through the proxy: its block decoded, and encoded again into `out` with the
/// fields the proxy adds.
fn relay(
    dec: &mut Decoder,
    enc: &mut Encoder,
    block: &Bytes,
    added: &[(&[u8], &[u8])],
    fields: &mut Vec<(Bytes, Bytes)>,
    out: &mut BytesMut,
) {
    fields.clear();
    dec.decode(block, 1 << 16, |f, _| {
        fields.push((f.name.clone(), f.value.clone()))
    })
    .expect("valid block");
    out.clear();
    enc.begin(out);
    for (n, v) in fields.iter() {
        enc.field(n, v, false, out);
    }
    for (n, v) in added {
        enc.field(n, v, false, out);
    }
}
