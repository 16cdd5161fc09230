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
    let mut req = Vec::with_capacity(8);
    let mut resp = Vec::with_capacity(8);
    let mut out = BytesMut::with_capacity(4096);
    for ((rq, rs), id) in requests.iter().zip(responses).zip(ids) {
        req.clear();
        down_dec
            .decode(rq, 1 << 16, |f| req.push((f.name, f.value)))
            .expect("valid block");
        out.clear();
        up_enc.begin(&mut out);
        for (n, v) in &req {
            up_enc.field(n, v, false, &mut out);
        }
        up_enc.field(b"x-forwarded-proto", b"http", false, &mut out);
        up_enc.field(b"x-request-id", id.as_bytes(), false, &mut out);
        let up_len = out.len();
        resp.clear();
        up_dec
            .decode(rs, 1 << 16, |f| resp.push((f.name, f.value)))
            .expect("valid block");
        out.clear();
        down_enc.begin(&mut out);
        for (n, v) in &resp {
            down_enc.field(n, v, false, &mut out);
        }
        down_enc.field(b"server", b"envoy", false, &mut out);
        down_enc.field(b"x-envoy-upstream-service-time", b"0", false, &mut out);
        *sizes = [rq.len(), up_len, rs.len(), out.len()];
    }
}
