//! Bounded random input against a running Sluice: mutated HTTP/1.1 requests (broken framing,
//! stray bytes, huge and repeated fields, pipelines, upgrades) over real sockets. Whatever
//! comes in, every answer must be a well-formed HTTP/1.1 status line, no task may panic, and
//! the proxy must go on serving. The seed is fixed, so a failure reproduces; `SLUICE_FUZZ_CASES`
//! runs more cases.
//!
//! In a test binary of its own: the panic hook it installs sees every thread of the process.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nhost: a\r\n\r\nGET /z HTTP/1.1\r\nhost: b\r\n\r\n",
    b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: v\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    b"CONNECT a:80 HTTP/1.1\r\nhost: a:80\r\n\r\n",
    b"GET /redirect HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET http://abs.example/abs HTTP/1.1\r\nhost: b\r\n\r\n",
    b"GET /%2e%2e/%2F../x//y HTTP/1.1\r\nhost: a:8080\r\n\r\n",
    b"GET * HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /h2c HTTP/1.1\r\nhost: a\r\nupgrade: h2c\r\nconnection: upgrade, http2-settings\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"99999999999999999999",
    b"-1",
    b"ffffffffffffffff",
    b"\r\n\r\n",
    b"content-length: 3\r\n",
    b"transfer-encoding: chunked\r\n",
    b"transfer-encoding: gzip, chunked\r\n",
    b"host: \r\n",
    b"connection: close\r\n",
    b"%",
    b"%00",
    b"/..",
    b"?",
    b"#",
    b"HTTP/1.0",
    b"HTTP/9.9",
    b"te: trailers\r\n",
    b"\xc3\x28",
    b"0\r\n\r\n",
];

/// One to five random edits of a seed request.
fn mutate(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut b = SEEDS[rng.usize(..SEEDS.len())].to_vec();
    for _ in 0..rng.usize(1..=5) {
        if b.is_empty() {
            b = SEEDS[rng.usize(..SEEDS.len())].to_vec();
        }
        let i = rng.usize(..b.len());
        match rng.u8(0..8) {
            0 => b[i] = rng.u8(..),
            1 => {
                let junk: Vec<u8> = (0..rng.usize(1..8)).map(|_| rng.u8(..)).collect();
                b.splice(i..i, junk);
            }
            2 => {
                let end = (i + rng.usize(1..8)).min(b.len());
                b.drain(i..end);
            }
            3 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                b.splice(i..i, t.iter().copied());
            }
            4 => {
                let j = rng.usize(..b.len());
                let (lo, hi) = (i.min(j), i.max(j).min(i.min(j) + 200));
                let copy = b[lo..hi].to_vec();
                b.splice(i..i, copy);
            }
            5 => b.extend_from_slice(SEEDS[rng.usize(..SEEDS.len())]),
            6 => {
                let n = [10, 5_000, 70_000][rng.usize(..3)];
                let mut field = b"x-h: ".to_vec();
                field.resize(5 + n, b'a');
                field.extend_from_slice(b"\r\n");
                b.splice(i..i, field);
            }
            _ => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                let many = t.repeat(rng.usize(2..200));
                b.splice(i..i, many);
            }
        }
    }
    b
}

/// Sends `input` and reads what comes back until the proxy closes or goes quiet.
async fn exchange(addr: std::net::SocketAddr, input: Vec<u8>) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    if s.write_all(&input).await.is_err() {
        return Vec::new(); // closed on us mid-send: nothing to judge
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        if got.len() > 1 << 22 {
            return got;
        }
    }
}

fn is_status_line(got: &[u8]) -> bool {
    got.len() >= 13
        && got.starts_with(b"HTTP/1.1 ")
        && got[9..12].iter().all(u8::is_ascii_digit)
        && got[12] == b' '
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_well_formed_answers_and_never_panic() {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let up = upstream("fuzz", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /redirect}
                redirect: {path_redirect: /elsewhere}
              - match: {safe_regex: {regex: "/re/([a-z]+)/(.*)"}}
                route: {cluster: fuzz_up, regex_rewrite: {pattern: {regex: "/re/([a-z]+)/(.*)"}, substitution: "/\\2/\\1"}}
              - match: {prefix: /}
                route: {cluster: fuzz_up, retry_policy: {retry_on: "5xx,reset", num_retries: 1}}
"#;
    let hcm = "          upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: CONNECT}]\n          stream_idle_timeout: 1s\n          request_headers_timeout: 1s\n";
    let app = sluice(&format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        listener_with("fuzz", vh, hcm),
        cluster("fuzz_up", &[up.addr], "")
    ))
    .await;
    let addr = app.listener_address("fuzz").unwrap();

    let cases: u64 = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut rng = fastrand::Rng::with_seed(0x5e1ce);
    let mut bad = Vec::new();
    let mut answered = 0;
    // Batches of concurrent connections: a case that waits for bytes that never come costs
    // its batch one read timeout, not the run one per case.
    for batch in 0..cases.div_ceil(50) {
        let inputs: Vec<Vec<u8>> = (0..50.min(cases - batch * 50))
            .map(|_| mutate(&mut rng))
            .collect();
        let runs: Vec<_> = inputs
            .iter()
            .map(|i| tokio::spawn(exchange(addr, i.clone())))
            .collect();
        for (input, run) in inputs.iter().zip(runs) {
            let got = run.await.unwrap();
            if got.is_empty() {
                continue;
            }
            answered += 1;
            if !is_status_line(&got) {
                bad.push(format!(
                    "{:?}\n  -> {:?}",
                    String::from_utf8_lossy(&input[..input.len().min(300)]),
                    String::from_utf8_lossy(&got[..got.len().min(200)])
                ));
            }
        }
        // Still serving.
        let mut c = H1::connect(addr).await;
        let r = c.get("h", "/alive").await;
        assert_eq!(r.status, 200, "after batch {batch}: {}", r.body);
    }
    println!("{cases} random requests, {answered} answered");
    assert!(
        bad.is_empty(),
        "answers that are not HTTP/1.1 status lines:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a task panicked (see above)"
    );
    // Most inputs are still requests: a proxy that answered nothing would pass the checks above.
    assert!(
        answered * 2 > cases,
        "only {answered} of {cases} inputs were answered"
    );
}
