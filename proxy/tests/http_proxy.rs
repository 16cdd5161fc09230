//! End-to-end HTTP through Sluice with real sockets: HTTP/1.1 and HTTP/2 clients, upstreams
//! speaking HTTP/1.1 and h2c, routing actions, errors, retries, faults, upgrades and pooling.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

const H2_OPTS: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

#[tokio::test]
async fn http1_and_http2_downstream_to_h1_and_h2c_upstreams() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /h2}
                route: {cluster: up_h2c}
              - match: {prefix: /}
                route: {cluster: up_h1}
"#;
    let cfg = bootstrap(
        &http_listener("basic", vh, ""),
        &(cluster("up_h1", &[a.addr], "") + &cluster("up_h2c", &[b.addr], H2_OPTS)),
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("basic").unwrap();

    let mut c = H1::connect(addr).await;
    let r = c.get("example.com", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.field("name"), Some("a"));
    assert_eq!(r.field("path"), Some("/hello?x=1"));
    assert_eq!(r.field("host"), Some("example.com"));
    assert_eq!(r.seen_header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.seen_header("x-request-id").map(str::len), Some(36));
    assert_eq!(r.headers["server"], "envoy");
    assert!(r.headers.contains_key("x-envoy-upstream-service-time"));

    let r = c.get("example.com", "/h2/x").await;
    assert_eq!(r.field("name"), Some("b"));
    assert_eq!(r.field("version"), Some("HTTP/2.0"));
    assert_eq!(r.field("host"), Some("example.com"));

    let mut h2 = H2::connect(addr).await;
    let r = h2.get("example.com", "/via-h2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("name"), Some("a"));
    assert_eq!(r.field("version"), Some("HTTP/1.1"));
    assert_eq!(r.field("host"), Some("example.com"));
    let r = h2.get("example.com", "/h2/both").await;
    assert_eq!(r.field("name"), Some("b"));
}

#[tokio::test]
async fn upstream_keepalive_connections_are_reused() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: reuse_up}\n";
    let app = sluice(&bootstrap(
        &http_listener("reuse", vh, ""),
        &cluster("reuse_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("reuse").unwrap()).await;
    for _ in 0..50 {
        assert_eq!(c.get("h", "/").await.status, 200);
    }
    assert_eq!(a.requests.load(std::sync::atomic::Ordering::SeqCst), 50);
    let cx = a.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        cx <= 2,
        "50 sequential requests used {cx} upstream connections"
    );
    // Pooled connections are open connections: Envoy's upstream_cx_active counts them.
    let stats = admin_get(&app, "/stats?filter=reuse_up.upstream_cx_")
        .await
        .body;
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cluster.reuse_up.{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert_eq!(stat("upstream_cx_active"), cx as u64, "{stats}");
    assert_eq!(stat("upstream_cx_total"), cx as u64, "{stats}");
    // New pool connections are timed.
    assert!(
        stats.contains("cluster.reuse_up.upstream_cx_connect_ms: P0("),
        "{stats}"
    );
}

#[tokio::test]
async fn idle_connection_closed_by_upstream_is_not_a_503() {
    // The upstream closes every connection right after answering; a pooled connection is then
    // dead by the time the next request comes. Sluice must notice and use a fresh one.
    let a = upstream("a", Behaviour::CloseAfterResponse).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: stale_up}\n";
    let app = sluice(&bootstrap(
        &http_listener("stale", vh, ""),
        &cluster("stale_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("stale").unwrap()).await;
    for i in 0..30 {
        let r = c.get("h", "/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        if i % 3 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn errors_have_envoys_statuses() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: connections are refused
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /dead}
                route: {cluster: dead_up}
              - match: {prefix: /missing}
                route: {cluster: no_such_cluster}
"#;
    let app = sluice(&bootstrap(
        &http_listener("errors", vh, ""),
        &cluster("dead_up", &[dead], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("errors").unwrap()).await;
    let r = c.get("h", "/nothing-matches").await;
    assert_eq!(r.status, 404);
    let r = c.get("h", "/dead").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connection failure"), "{}", r.body);
    let r = c.get("h", "/missing").await;
    assert_eq!(r.status, 503);
    // Oversized headers: 431.
    let big = "x".repeat(70 * 1024);
    let mut c = H1::connect(app.listener_address("errors").unwrap()).await;
    let r = c
        .send(
            Request::get("/dead")
                .header("host", "h")
                .header("x-big", big)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 431);
}

/// An HTTP/1.1 upstream that answers each request with the raw bytes its path names, then
/// closes: `/case/N` gets `responses[N]`; `/flaky` gets a malformed response the first time and
/// a good one after.
async fn raw_h1_upstream(responses: &'static [&'static str]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or("");
                let reply = match path.strip_prefix("/case/") {
                    Some(n) => responses[n.parse::<usize>().unwrap()],
                    None if flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab"
                    }
                    None => "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood",
                };
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// Envoy's default limits on an upstream's response head: 100 headers
/// (`max_headers_count`) and 60 KiB (`max_response_headers_kb`); over either is a 502
/// protocol error.
#[tokio::test]
async fn upstream_response_heads_are_held_to_envoys_default_limits() {
    let head = |n: usize, size: usize| -> &'static str {
        let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 1..n {
            let name = format!("x-h{i}: ");
            let fill = (size / n).saturating_sub(name.len() + 2).max(1);
            h.push_str(&format!("{name}{}\r\n", "v".repeat(fill)));
        }
        h.push_str("\r\nok");
        Box::leak(h.into_boxed_str())
    };
    let cases: &'static [&'static str] = Box::leak(
        vec![
            // (95: the test client itself takes at most 100, Sluice's own headers included.)
            head(95, 1000),
            head(101, 1000),
            head(20, 40 * 1024),
            head(20, 70 * 1024),
        ]
        .into_boxed_slice(),
    );
    let up = raw_h1_upstream(cases).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: limits_up}
"#;
    let app = sluice(&bootstrap(
        &listener_with("limits", vh, ""),
        &cluster("limits_up", &[up], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("limits").unwrap()).await;
    for (i, want) in [200, 502, 200, 502].into_iter().enumerate() {
        let r = c.get("h", &format!("/case/{i}")).await;
        assert_eq!(r.status, want, "case {i}: {}", r.body);
        if want == 502 {
            assert!(
                r.body.ends_with("reset reason: protocol error"),
                "{}",
                r.body
            );
        } else {
            assert_eq!(r.body, "ok");
        }
    }
}

#[tokio::test]
async fn upstream_protocol_errors_are_502_and_reset_retries_cover_them() {
    // Envoy's answer to an upstream that breaks HTTP/1.1: 502, reset reason "protocol error"
    // (response flag UPE), not the 503 of a connection that merely closed.
    static BROKEN: [&str; 6] = [
        "HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ncontent-length: nine\r\n\r\n",
        "SSH-2.0-OpenSSH_9.6\r\n\r\n",
        // A server may not switch protocols unasked: the client would wait for a protocol
        // nobody speaks.
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw",
    ];
    let up = raw_h1_upstream(&BROKEN).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /flaky}
                route: {cluster: broken_up, retry_policy: {retry_on: reset, num_retries: 1}}
              - match: {prefix: /}
                route: {cluster: broken_up}
"#;
    let log = std::env::temp_dir().join(format!("sluice-upe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let access_log = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}}
"#,
        log.display()
    );
    let app = sluice(&bootstrap(
        &listener_with("broken", vh, &access_log),
        &cluster("broken_up", &[up], ""),
    ))
    .await;
    let addr = app.listener_address("broken").unwrap();
    let mut c = H1::connect(addr).await;
    let mut h2 = H2::connect(addr).await;
    for (i, raw) in BROKEN.iter().enumerate() {
        for (proto, r) in [
            ("h1", c.get("h", &format!("/case/{i}")).await),
            ("h2", h2.get("h", &format!("/case/{i}")).await),
        ] {
            assert_eq!(r.status, 502, "{proto} {raw:?}: {}", r.body);
            assert!(
                r.body.ends_with("reset reason: protocol error"),
                "{proto} {raw:?}: {}",
                r.body
            );
            assert!(r.headers.get("upgrade").is_none(), "{proto} {raw:?}");
        }
    }
    // The downstream connection serves on, and a retry on `reset` covers a protocol error.
    let r = c.get("h", "/flaky").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert_eq!(
        stat(&app, "cluster.broken_up.upstream_rq_retry").await,
        Some(1)
    );
    // Logged with Envoy's flag for it.
    let text = log_lines(&log, 2 * BROKEN.len() + 1).await.join("\n");
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        text.matches("502 UPE /case/").count(),
        2 * BROKEN.len(),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_request_gets_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                direct_response: {status: 200}\n";
    let app = sluice(&bootstrap(
        &http_listener("bad", vh, ""),
        &cluster("unused_bad", &["127.0.0.1:9".parse().unwrap()], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("bad").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn rewrites_redirects_and_direct_responses() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              response_headers_to_add:
              - header: {key: x-vhost, value: yes}
              routes:
              - match: {prefix: /old/}
                route: {cluster: rw_up, prefix_rewrite: /new/, host_rewrite_literal: internal.svc}
                request_headers_to_add:
                - header: {key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
                - header: {key: x-start, value: "%START_TIME%"}
                response_headers_to_add:
                - header: {key: x-start, value: "%START_TIME%"}
              - match: {prefix: /moved}
                redirect: {host_redirect: other.example.com, path_redirect: /landing, response_code: FOUND}
              - match: {path: /ping}
                direct_response: {status: 200, body: {inline_string: pong}}
"#;
    let app = sluice(&bootstrap(
        &http_listener("rw", vh, ""),
        &cluster("rw_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("rw").unwrap()).await;
    let r = c.get("example.com", "/old/thing?q=1").await;
    assert_eq!(r.field("path"), Some("/new/thing?q=1"));
    assert_eq!(r.field("host"), Some("internal.svc"));
    assert_eq!(r.seen_header("x-client"), Some("127.0.0.1"));
    assert_eq!(
        r.seen_header("x-envoy-original-path"),
        Some("/old/thing?q=1")
    );
    assert_eq!(r.headers["x-vhost"], "yes");
    // %START_TIME% is the request's start both ways: the same instant in the header sent
    // upstream and in the response's (RFC 3339, UTC, milliseconds; each is worked out from the
    // monotonic start when printed, so they may differ by a rounding).
    let ms_of_day = |t: &str| -> i64 {
        assert_eq!(t.len(), "2026-11-27T20:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
        ((n(11..13) * 60 + n(14..16)) * 60 + n(17..19)) * 1000 + n(20..23)
    };
    let sent = ms_of_day(r.seen_header("x-start").expect("x-start sent upstream"));
    let answered = ms_of_day(r.headers["x-start"].to_str().unwrap());
    assert!((sent - answered).abs() <= 1, "{sent} vs {answered}");
    let r = c.get("example.com", "/moved/x").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://other.example.com/landing");
    let r = c.get("example.com", "/ping").await;
    assert_eq!((r.status, r.body.as_str()), (200, "pong"));
    assert_eq!(r.headers["content-type"], "text/plain");
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: w_a, weight: 20}
                    - {name: w_b, weight: 80}
"#;
    let app = sluice(&bootstrap(
        &http_listener("weighted", vh, ""),
        &(cluster("w_a", &[a.addr], "") + &cluster("w_b", &[b.addr], "")),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("weighted").unwrap()).await;
    let n = 2000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let r = c.get("h", "/").await;
        *counts
            .entry(r.field("name").unwrap().to_string())
            .or_default() += 1;
    }
    let share_a = counts["a"] as f64 / n as f64;
    // 20% ± 4 points: > 4.4 standard deviations at n=2000.
    assert!((0.16..=0.24).contains(&share_a), "{counts:?}");
}

#[tokio::test]
async fn retries_move_to_another_endpoint() {
    let bad = upstream("bad", Behaviour::Status(503)).await;
    let good = upstream("good", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route:
                  cluster: retry_up
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 2
                    retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]
"#;
    let app = sluice(&bootstrap(
        &http_listener("retry", vh, ""),
        &cluster("retry_up", &[bad.addr, good.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("retry").unwrap()).await;
    for _ in 0..40 {
        let r = c.get("h", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.field("name"), Some("good"));
    }
    assert!(bad.requests.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn fault_filter_aborts_and_delays_at_configured_rates() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /abort}
                route: {cluster: fault_up}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 418, percentage: {numerator: 30}}
              - match: {prefix: /delay}
                route: {cluster: fault_up}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: {fixed_delay: 0.3s, percentage: {numerator: 100}}
              - match: {prefix: /}
                route: {cluster: fault_up}
"#;
    let filters = r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
"#;
    let app = sluice(&bootstrap(
        &http_listener("fault", vh, filters),
        &cluster("fault_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("fault").unwrap()).await;
    let n = 1000;
    let mut aborted = 0;
    for _ in 0..n {
        let r = c.get("h", "/abort").await;
        if r.status == 418 {
            assert_eq!(r.body, "fault filter abort");
            aborted += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(
        (230..=370).contains(&aborted),
        "{aborted} of {n} aborted, want ~30%"
    );
    let t = std::time::Instant::now();
    let r = c.get("h", "/delay").await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    // The fault's delay is the proxy's, not the upstream's service time.
    let service: u64 = r.headers["x-envoy-upstream-service-time"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(service < 300, "upstream service time {service} ms");
    assert_eq!(c.get("h", "/plain").await.status, 200);
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: ws_up}\n";
    let app = sluice(&bootstrap(
        &http_listener("ws", vh, ""),
        &cluster("ws_up", &[a.addr], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("ws").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"frames both ways").await.unwrap();
    let mut echo = vec![0u8; 16];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"frames both ways");
}

/// CONNECT requests tunnel to the cluster `connect_up`; others get a direct 200.
const CONNECT_VH: &str = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route:
                  cluster: connect_up
                  upgrade_configs: [{upgrade_type: CONNECT}]
              - match: {prefix: /}
                direct_response: {status: 200}
"#;

#[tokio::test]
async fn connect_tunnels_tcp_and_is_refused_when_not_enabled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let app = sluice(&bootstrap(
        &http_listener("connect", CONNECT_VH, ""),
        &cluster("connect_up", &[echo], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("connect").unwrap())
        .await
        .unwrap();
    s.write_all(b"CONNECT echo.internal:7 HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"through the tunnel").await.unwrap();
    let mut echo_back = [0u8; 18];
    s.read_exact(&mut echo_back).await.unwrap();
    assert_eq!(&echo_back, b"through the tunnel");

    // Without the route's upgrade config (and none on the connection manager for CONNECT): 403.
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {connect_matcher: {}}\n                route: {cluster: connect_up2}\n";
    let app = sluice(&bootstrap(
        &http_listener("noconnect", vh, ""),
        &cluster("connect_up2", &[echo], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("noconnect").unwrap())
        .await
        .unwrap();
    s.write_all(b"CONNECT echo.internal:7 HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 403"));
}

/// An h2c client connection driven by the `h2` crate (streams, resets and CONNECT by hand).
async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    tx.ready().await.unwrap()
}

#[tokio::test]
async fn h2_connect_streams_are_tunnels() {
    // RFC 9113 §8.5: a CONNECT stream's DATA frames carry the tunnel's bytes both ways, and the
    // client's END_STREAM half-closes it.
    let echo = tcp_echo().await;
    let app = sluice(&bootstrap(
        &http_listener("h2connect", CONNECT_VH, ""),
        &cluster("connect_up", &[echo], ""),
    ))
    .await;
    let mut tx = h2_client(app.listener_address("h2connect").unwrap()).await;
    let req = Request::connect("echo.internal:7").body(()).unwrap();
    let (resp, mut send) = tx.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut recv = resp.into_body();
    let mut got = Vec::new();
    for part in [&b"through the "[..], b"h2 tunnel"] {
        send.send_data(Bytes::from_static(part), false).unwrap();
        while got.len() < b"through the ".len() || (part == b"h2 tunnel" && got.len() < 21) {
            let d = recv.data().await.unwrap().unwrap();
            recv.flow_control().release_capacity(d.len()).unwrap();
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got, b"through the h2 tunnel");
    // The client's END_STREAM reaches the echo server as EOF; its close ends the stream.
    send.send_data(Bytes::new(), true).unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Some(d) = recv.data().await {
            rest.extend_from_slice(&d.unwrap());
        }
        rest
    })
    .await
    .expect("the tunnel's stream did not end");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn h2_client_reset_cancels_the_upstream_request() {
    let slow = upstream("slow", Behaviour::Delay(20_000)).await;
    let app = sluice(&bootstrap(
        &http_listener("h2reset", &all_to("reset_up"), ""),
        &cluster("reset_up", &[slow.addr], ""),
    ))
    .await;
    let mut tx = h2_client(app.listener_address("h2reset").unwrap()).await;
    let req = Request::get("http://slow.internal/").body(()).unwrap();
    let (resp, mut send) = tx.send_request(req, true).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while slow.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        stat(&app, "cluster.reset_up.upstream_rq_active").await,
        Some(1)
    );
    send.send_reset(h2::Reason::CANCEL);
    drop(resp);
    let want = [
        ("http.h2reset.downstream_rq_rx_reset", 1),
        ("http.h2reset.downstream_rq_active", 0),
        ("cluster.reset_up.upstream_rq_active", 0),
        ("cluster.reset_up.upstream_rq_tx_reset", 1),
    ];
    loop {
        let mut now = Vec::new();
        for (name, _) in want {
            now.push(stat(&app, name).await);
        }
        if want.iter().zip(&now).all(|((_, v), n)| *n == Some(*v)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline + std::time::Duration::from_secs(5),
            "after the reset: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The connection serves on.
    let (resp, _) = tx
        .send_request(
            Request::get("http://slow.internal/x").body(()).unwrap(),
            true,
        )
        .unwrap();
    drop(resp);
}

/// The server's first SETTINGS parameters and its connection WINDOW_UPDATE increment, read
/// off the wire after the client preface.
async fn h2_server_settings(addr: std::net::SocketAddr) -> (HashMap<u16, u32>, u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (mut settings, mut window) = (None, None);
    while settings.is_none() || window.is_none() {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        match (head[3], head[4] & 1, stream) {
            (4, 0, 0) => {
                settings = Some(
                    payload
                        .chunks(6)
                        .map(|p| {
                            (
                                u16::from_be_bytes([p[0], p[1]]),
                                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                            )
                        })
                        .collect(),
                )
            }
            (8, _, 0) => window = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            _ => {}
        }
    }
    (settings.unwrap(), window.unwrap())
}

#[tokio::test]
async fn h2_settings_follow_http2_protocol_options() {
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    const INITIAL_WINDOW_SIZE: u16 = 4;
    let up = upstream("h2s", Behaviour::Echo).await;
    let opts = "          http2_protocol_options: {max_concurrent_streams: 3, initial_stream_window_size: 70000, initial_connection_window_size: 2000000}\n";
    let app = sluice(&bootstrap(
        &format!(
            "{}{}",
            listener_with("h2opts", &all_to("h2s_up"), opts),
            listener_with("h2default", &all_to("h2s_up"), "")
        ),
        &cluster("h2s_up", &[up.addr], ""),
    ))
    .await;
    let (settings, window) = h2_server_settings(app.listener_address("h2opts").unwrap()).await;
    assert_eq!(
        settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&3),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&INITIAL_WINDOW_SIZE),
        Some(&70_000),
        "{settings:?}"
    );
    assert_eq!(window, 2_000_000 - 65_535);
    let (settings, window) = h2_server_settings(app.listener_address("h2default").unwrap()).await;
    assert_eq!(
        settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&2_147_483_647),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&INITIAL_WINDOW_SIZE),
        Some(&(1 << 20)),
        "{settings:?}"
    );
    assert_eq!(window, (1 << 20) - 65_535);
    // And requests are served with them; responses carry a date, as on HTTP/1.1.
    let mut h2 = H2::connect(app.listener_address("h2opts").unwrap()).await;
    let r = h2.get("h2s.internal", "/").await;
    assert_eq!(r.status, 200);
    let date = r.headers["date"].to_str().unwrap();
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
}

#[tokio::test]
async fn h2_head_and_204_responses_have_no_body_and_no_invented_length() {
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: "hello"}}
"#;
    let app = sluice(&bootstrap(&http_listener("h2head", vh, ""), "")).await;
    let mut h2 = H2::connect(app.listener_address("h2head").unwrap()).await;
    let get = h2.get("h.internal", "/").await;
    assert_eq!((get.status, get.body.as_str()), (200, "hello"));
    assert_eq!(get.headers["content-length"], "5");
    let head = h2
        .send(
            Request::head("http://h.internal/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_ne!(
        head.headers
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "{:?}",
        head.headers
    );
    // A 204 has no content whatever the route says.
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 204, body: {inline_string: "ignored"}}
"#;
    let app = sluice(&bootstrap(&http_listener("h2nocontent", vh, ""), "")).await;
    let mut h2 = H2::connect(app.listener_address("h2nocontent").unwrap()).await;
    let r = h2.get("h.internal", "/").await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert!(r.headers.get("content-length").is_none(), "{:?}", r.headers);
}

/// Sends `bytes` (a client preface and frames) on a new connection to `addr`; the frames the
/// server sent until it closed the connection, as (type, flags, payload).
async fn h2_raw_until_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the server kept the connection open")
        .unwrap();
    let (mut at, mut frames) = (0, Vec::new());
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        let end = (at + 9 + len).min(got.len());
        frames.push((got[at + 3], got[at + 4], got[at + 9..end].to_vec()));
        at += 9 + len;
    }
    frames
}

#[tokio::test]
async fn h2_protocol_errors_close_the_connection_and_are_counted() {
    let up = upstream("h2perr", Behaviour::Echo).await;
    let app = sluice(&bootstrap(
        &http_listener("h2perr", &all_to("h2perr_up"), ""),
        &cluster("h2perr_up", &[up.addr], ""),
    ))
    .await;
    // The preface and SETTINGS, then a DATA frame on stream 0 (RFC 9113 §6.1: a connection
    // error of type PROTOCOL_ERROR). The server answers with GOAWAY(PROTOCOL_ERROR) and closes.
    let frames = h2_raw_until_closed(
        app.listener_address("h2perr").unwrap(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x01\0\0\0\0\0\0x",
    )
    .await;
    let goaway = frames.iter().find(|(t, _, _)| *t == 7);
    assert_eq!(
        goaway.map(|(_, _, p)| &p[4..8]),
        Some(&[0u8, 0, 0, 1][..]),
        "GOAWAY(PROTOCOL_ERROR) expected in {frames:?}"
    );
    assert_eq!(
        stat(&app, "http.h2perr.downstream_cx_protocol_error").await,
        Some(1)
    );
}

#[tokio::test]
async fn h2_client_reset_during_the_response_body_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends a response head and a first chunk, then stalls.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    let app = sluice(&bootstrap(
        &http_listener("h2bodyreset", &all_to("stall_up"), ""),
        &cluster("stall_up", &[up], ""),
    ))
    .await;
    let mut tx = h2_client(app.listener_address("h2bodyreset").unwrap()).await;
    let req = Request::get("http://stall.internal/").body(()).unwrap();
    let (resp, _) = tx.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(&body.data().await.unwrap().unwrap()[..], b"first");
    // Dropping the body (the only handle on the stream left) resets it.
    drop(body);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = stat(&app, "http.h2bodyreset.downstream_rq_rx_reset").await;
        if n == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rx_reset: {n:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn h2_keepalive_pings_close_a_silent_client_and_keep_a_live_one() {
    let up = upstream("h2ka", Behaviour::Echo).await;
    let opts = "          http2_protocol_options: {connection_keepalive: {interval: 0.2s, timeout: 0.3s}}\n";
    let app = sluice(&bootstrap(
        &listener_with("h2ka", &all_to("h2ka_up"), opts),
        &cluster("h2ka_up", &[up.addr], ""),
    ))
    .await;
    let addr = app.listener_address("h2ka").unwrap();
    // A client that never answers PINGs: the server PINGs it, then closes.
    let frames = h2_raw_until_closed(
        addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await;
    let pings = frames
        .iter()
        .filter(|(t, flags, _)| *t == 6 && flags & 1 == 0)
        .count();
    assert_eq!(pings, 1, "{frames:?}");
    // A client that answers (the h2 crate does) stays connected past several intervals.
    let mut live = H2::connect(addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(!live.is_closed());
    assert_eq!(live.get("h2ka.internal", "/").await.status, 200);
}

#[tokio::test]
async fn http1_204_responses_have_no_content_length_or_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 204, body: {inline_string: "ignored"}}
"#;
    let app = sluice(&bootstrap(&http_listener("h1nocontent", vh, ""), "")).await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("h1nocontent").unwrap())
        .await
        .unwrap();
    // Two pipelined requests: the second response follows the first head directly.
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text.matches("HTTP/1.1 204 No Content\r\n").count(),
        2,
        "{text}"
    );
    assert!(!text.contains("content-length"), "{text}");
    assert!(!text.contains("ignored"), "{text}");
}

#[tokio::test]
async fn mirrored_requests_reach_the_shadow_cluster() {
    let main = upstream("main", Behaviour::Echo).await;
    let shadow = upstream("shadow", Behaviour::Status(500)).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route:
                  cluster: mirror_main
                  request_mirror_policies:
                  - cluster: mirror_shadow
                    runtime_fraction: {default_value: {numerator: 50}}
"#;
    let app = sluice(&bootstrap(
        &http_listener("mirror", vh, ""),
        &(cluster("mirror_main", &[main.addr], "") + &cluster("mirror_shadow", &[shadow.addr], "")),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("mirror").unwrap()).await;
    let n = 400;
    for _ in 0..n {
        let r = c.get("reviews:9080", "/").await;
        // The shadow's 500s never reach the client.
        assert_eq!(r.status, 200);
        assert_eq!(r.field("name"), Some("main"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let shadowed = shadow.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (140..=260).contains(&shadowed),
        "{shadowed} of {n} mirrored, want ~50%"
    );
    assert_eq!(main.requests.load(std::sync::atomic::Ordering::SeqCst), n);
}

#[tokio::test]
async fn dns_clusters_resolve_hostnames() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /strict}
                route: {cluster: dns_strict}
              - match: {prefix: /logical}
                route: {cluster: dns_logical}
"#;
    let dns = |name: &str, kind: &str| {
        format!(
            "  - name: {name}\n    type: {kind}\n    connect_timeout: 1s\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}\n",
            a.addr.port()
        )
    };
    let app = sluice(&bootstrap(
        &http_listener("dns", vh, ""),
        &(dns("dns_strict", "STRICT_DNS") + &dns("dns_logical", "LOGICAL_DNS")),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("dns").unwrap()).await;
    // Resolution is asynchronous: wait for it to land.
    let mut ok = false;
    for _ in 0..50 {
        if c.get("h", "/strict").await.status == 200 && c.get("h", "/logical").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "DNS clusters never resolved localhost");
}

#[tokio::test]
async fn edge_proxy_appends_x_forwarded_for() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: xff_up}\n";
    let listener = http_listener("xff", vh, "").replace(
        "          stat_prefix: xff\n",
        "          stat_prefix: xff\n          use_remote_address: true\n",
    );
    let app = sluice(&bootstrap(&listener, &cluster("xff_up", &[a.addr], ""))).await;
    let mut c = H1::connect(app.listener_address("xff").unwrap()).await;
    let r = c
        .send(
            Request::get("/")
                .header("host", "h")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-request-id", "client-chosen")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        r.seen_header("x-forwarded-for"),
        Some("203.0.113.9,127.0.0.1")
    );
    // An edge proxy does not trust the client's request id.
    assert_ne!(r.seen_header("x-request-id"), Some("client-chosen"));
    // A sidecar (use_remote_address false) leaves XFF and keeps the request id.
    let app = sluice(&bootstrap(
        &http_listener("noxff", vh.replace("xff_up", "noxff_up").as_str(), ""),
        &cluster("noxff_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("noxff").unwrap()).await;
    let r = c
        .send(
            Request::get("/")
                .header("host", "h")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-request-id", "client-chosen")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.seen_header("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(r.seen_header("x-request-id"), Some("client-chosen"));
}

#[tokio::test]
async fn normalize_path_applies_before_routing() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /admin}
                direct_response: {status: 403, body: {inline_string: denied}}
              - match: {prefix: /}
                route: {cluster: norm_up}
"#;
    let listener = http_listener("norm", vh, "").replace(
        "          stat_prefix: norm\n",
        "          stat_prefix: norm\n          normalize_path: true\n          merge_slashes: true\n",
    );
    let app = sluice(&bootstrap(&listener, &cluster("norm_up", &[a.addr], ""))).await;
    let mut c = H1::connect(app.listener_address("norm").unwrap()).await;
    let r = c.get("h", "/public/../admin/users").await;
    assert_eq!((r.status, r.body.as_str()), (403, "denied"));
    let r = c.get("h", "//public//./page?q=/../x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("path"), Some("/public/page?q=/../x"));
}

#[tokio::test]
async fn max_requests_circuit_breaker_overflows_fast() {
    // An upstream that holds every request for a while.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "slow",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: cb_up}\n";
    let cb = "    circuit_breakers: {thresholds: [{max_requests: 2}]}\n";
    let app = sluice(&bootstrap(
        &http_listener("cb", vh, ""),
        &cluster("cb_up", &[slow], cb),
    ))
    .await;
    let addr = app.listener_address("cb").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            c.get("h", "/").await.status
        }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [200, 200, 503, 503, 503, 503], "{codes:?}");
    let stats = admin_get(&app, "/stats?filter=cb_up").await.body;
    assert!(
        stats.contains("cluster.cb_up.upstream_rq_pending_overflow: 4"),
        "{stats}"
    );
}

#[tokio::test]
async fn hash_policy_pins_users_to_hosts_with_ring_hash_and_maglev() {
    for (name, policy) in [("rh", "RING_HASH"), ("mg", "MAGLEV")] {
        let ups = [
            upstream("u0", Behaviour::Echo).await,
            upstream("u1", Behaviour::Echo).await,
            upstream("u2", Behaviour::Echo).await,
        ];
        let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
        let vh = format!(
            "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                route:\n                  cluster: {name}_up\n                  hash_policy: [{{header: {{header_name: x-user}}}}]\n"
        );
        let app = sluice(&bootstrap(
            &http_listener(name, &vh, ""),
            &cluster(
                &format!("{name}_up"),
                &addrs,
                &format!("    lb_policy: {policy}\n"),
            ),
        ))
        .await;
        let mut c = H1::connect(app.listener_address(name).unwrap()).await;
        let mut seen_hosts = std::collections::HashSet::new();
        for user in 0..30 {
            let mut first = None;
            for _ in 0..5 {
                let r = c
                    .send(
                        Request::get("/")
                            .header("host", "h")
                            .header("x-user", format!("user-{user}"))
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                    .await;
                let host = r.field("name").unwrap().to_string();
                match &first {
                    None => first = Some(host.clone()),
                    Some(f) => assert_eq!(f, &host, "{policy}: user-{user} moved between hosts"),
                }
                seen_hosts.insert(host);
            }
        }
        assert_eq!(
            seen_hosts.len(),
            3,
            "{policy}: 30 users should spread over all hosts"
        );
    }
}

#[tokio::test]
async fn auto_host_rewrite_uses_the_endpoint_hostname() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: auto_up, auto_host_rewrite: true}\n";
    let dns = format!(
        "  - name: auto_up\n    type: STRICT_DNS\n    connect_timeout: 1s\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: auto_up\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}\n",
        a.addr.port()
    );
    let app = sluice(&bootstrap(&http_listener("autohost", vh, ""), &dns)).await;
    let mut c = H1::connect(app.listener_address("autohost").unwrap()).await;
    let mut host = None;
    for _ in 0..50 {
        let r = c.get("original.example", "/").await;
        if r.status == 200 {
            host = r.field("host").map(str::to_string);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(host.as_deref(), Some("localhost"));
}

/// An HTTP/1.1 upstream that answers `body` after the milliseconds `delay_ms` gives for the
/// request's path.
async fn slow_upstream(delay_ms: fn(&str) -> u64, body: &'static str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let ms = delay_ms(req.uri().path());
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn route_idle_timeout_ends_a_silent_stream() {
    let slow = slow_upstream(|_| 600, "late").await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /idle}
                route: {cluster: idle_up, idle_timeout: 0.15s}
              - match: {prefix: /}
                route: {cluster: idle_up}
"#;
    let app = sluice(&bootstrap(
        &http_listener("idle", vh, ""),
        &cluster("idle_up", &[slow], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("idle").unwrap()).await;
    let t = std::time::Instant::now();
    let r = c.get("h", "/idle").await;
    assert_eq!((r.status, r.body.as_str()), (408, "stream timeout"));
    assert!(t.elapsed() < std::time::Duration::from_millis(550));
    let mut c = H1::connect(app.listener_address("idle").unwrap()).await;
    let r = c.get("h", "/other").await;
    assert_eq!((r.status, r.body.as_str()), (200, "late"));
}

/// gRPC requests: Envoy's timeout rules (`max_grpc_timeout` takes the deadline from
/// `grpc-timeout`, `max_stream_duration` bounds the stream, `x-envoy-upstream-rq-timeout-ms`
/// overrides the route) and local replies in gRPC form.
#[tokio::test]
async fn grpc_timeouts_and_grpc_local_replies() {
    let slow = upstream("slow", Behaviour::Delay(1500)).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /grpc-max/}
                route: {cluster: slow, timeout: 0s, max_grpc_timeout: 0s}
              - match: {prefix: /duration/}
                route: {cluster: slow, max_stream_duration: {max_stream_duration: 0.3s, grpc_timeout_header_max: 0s}}
              - match: {prefix: /plain/}
                route: {cluster: slow, timeout: 10s}
              - match: {prefix: /missing/}
                route: {cluster: nowhere}
"#;
    let cfg = bootstrap(
        &http_listener("grpc_to", vh, ""),
        &cluster("slow", &[slow.addr], H2_OPTS),
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("grpc_to").unwrap();
    let mut h2 = H2::connect(addr).await;
    let grpc = |path: &str, timeout: Option<&str>| {
        let mut b = Request::post(format!("http://svc{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let timed = |r: &Got| {
        (
            r.status,
            r.headers
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string()),
            r.headers
                .get("grpc-message")
                .map(|v| v.to_str().unwrap().to_string()),
        )
    };

    // The client's grpc-timeout becomes the route timeout: the router gives up after 200 ms
    // with Envoy's upstream timeout, in gRPC form (UNAVAILABLE).
    let t0 = std::time::Instant::now();
    let r = h2.send(grpc("/grpc-max/a", Some("200m"))).await;
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        timed(&r),
        (
            200,
            Some("14".into()),
            Some("upstream request timeout".into())
        )
    );
    assert_eq!(r.headers["content-type"], "application/grpc");
    // Enough time: the upstream answers, and saw the deadline it was given.
    let r = h2.send(grpc("/grpc-max/b", Some("5S"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.seen_header("grpc-timeout"), Some("5000m"));
    // No grpc-timeout: no limit at all (the route's 0s), so the slow upstream is waited for.
    let r = h2.send(grpc("/grpc-max/c", None)).await;
    assert_eq!(r.status, 200);

    // max_stream_duration: the stream ends after 300 ms with DEADLINE_EXCEEDED...
    let t0 = std::time::Instant::now();
    let r = h2.send(grpc("/duration/a", None)).await;
    assert!(t0.elapsed() < std::time::Duration::from_millis(1400));
    assert_eq!(
        timed(&r),
        (
            200,
            Some("4".into()),
            Some("downstream duration timeout".into())
        )
    );
    // ...and grpc_timeout_header_max 0s lets the client's own grpc-timeout decide.
    let r = h2.send(grpc("/duration/b", Some("4S"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("grpc-timeout"), Some("4000m"));
    // Plain HTTP gets the same limit as a 504.
    let r = H1::connect(addr).await.get("svc", "/duration/c").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "downstream duration timeout")
    );

    // x-envoy-upstream-rq-timeout-ms overrides the route's 10 s and is not forwarded.
    let mut c = H1::connect(addr).await;
    let t0 = std::time::Instant::now();
    let r = c
        .send(
            Request::get("/plain/x")
                .header("host", "svc")
                .header("x-envoy-upstream-rq-timeout-ms", "200")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(t0.elapsed() < std::time::Duration::from_millis(1400));
    let r = c
        .send(
            Request::get("/plain/y")
                .header("host", "svc")
                .header("x-envoy-upstream-rq-timeout-ms", "5000")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("x-envoy-upstream-rq-timeout-ms"), None);

    // Other local replies for gRPC requests: no route → UNIMPLEMENTED, missing cluster →
    // UNAVAILABLE, both as HTTP 200 trailers-only responses.
    let r = h2.send(grpc("/missing/x", None)).await;
    assert_eq!(timed(&r).0, 200);
    assert_eq!(timed(&r).1.as_deref(), Some("14"));
    let req = Request::post("http://other/none")
        .header("content-type", "application/grpc+proto")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h2.send(req).await;
    assert_eq!((r.status, timed(&r).1.as_deref()), (200, Some("12")));
    let stats = admin_get(&app, "/stats").await.body;
    assert!(
        stats.contains("http.grpc_to.downstream_rq_max_duration_reached: 2"),
        "{stats}"
    );
}

/// Outlier detection: a host answering 503 is ejected after `consecutive_5xx` in a row, gets
/// no traffic for `base_ejection_time`, comes back on the interval, and is ejected again.
#[tokio::test]
async fn outlier_detection_ejects_a_failing_host_and_brings_it_back() {
    let good = upstream("good", Behaviour::Echo).await;
    let bad = upstream("bad", Behaviour::Status(503)).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: pair}
"#;
    let od = "    outlier_detection: {consecutive_5xx: 3, interval: 0.1s, base_ejection_time: 2s, max_ejection_percent: 100}\n";
    let cfg = bootstrap(
        &http_listener("od", vh, ""),
        &cluster("pair", &[good.addr, bad.addr], od),
    );
    let app = sluice(&cfg).await;
    let mut c = H1::connect(app.listener_address("od").unwrap()).await;
    let mut failed = 0;
    for i in 0..30 {
        let r = c.get("svc", &format!("/{i}")).await;
        if r.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, 3, "only the three 503s before the ejection");
    assert_eq!(bad.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    let stats = admin_get(&app, "/stats?filter=outlier").await.body;
    assert!(
        stats.contains("cluster.pair.outlier_detection.ejections_active: 1"),
        "{stats}"
    );
    assert!(stats.contains("cluster.pair.outlier_detection.ejections_enforced_consecutive_5xx: 1"));
    let clusters = admin_get(&app, "/clusters").await.body;
    assert!(
        clusters.contains(&format!(
            "pair::{}::health_flags::/failed_outlier_check",
            bad.addr
        )),
        "{clusters}"
    );

    // After base_ejection_time the host is back (on an interval tick), fails three more times,
    // and is ejected again.
    tokio::time::sleep(std::time::Duration::from_millis(2400)).await;
    let stats = admin_get(&app, "/stats?filter=outlier").await.body;
    assert!(
        stats.contains("cluster.pair.outlier_detection.ejections_active: 0"),
        "{stats}"
    );
    let mut failed = 0;
    for i in 0..12 {
        if c.get("svc", &format!("/again/{i}")).await.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, 3);
    let stats = admin_get(&app, "/stats?filter=outlier").await.body;
    assert!(stats.contains("cluster.pair.outlier_detection.ejections_enforced_total: 2"));
}

/// Istio's circuit-breaking task: `maxConnections: 1`, `http1MaxPendingRequests: 1`. With a
/// slow upstream and five concurrent requests, one is served, one waits for the connection and
/// is served after it, and three fail at once with an overflow.
#[tokio::test]
async fn connection_circuit_breaker_queues_one_and_rejects_the_rest() {
    let slow = upstream("slow", Behaviour::Delay(300)).await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: cb}
"#;
    let cb =
        "    circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1}]}\n";
    let cfg = bootstrap(
        &http_listener("cb", vh, ""),
        &cluster("cb", &[slow.addr], cb),
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("cb").unwrap();
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push(tokio::spawn(async move {
            let r = H1::connect(addr).await.get("svc", &format!("/{i}")).await;
            (r.status, r.body, t0.elapsed())
        }));
    }
    let mut ok = Vec::new();
    let mut overflow = 0;
    for t in tasks {
        let (status, body, took) = t.await.unwrap();
        match status {
            200 => ok.push(took),
            503 => {
                assert!(body.ends_with("overflow"), "{body}");
                assert!(took < std::time::Duration::from_millis(250), "{took:?}");
                overflow += 1;
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert_eq!((ok.len(), overflow), (2, 3), "{ok:?}");
    ok.sort();
    // The queued request went out on the same connection after the first finished.
    assert!(ok[1] >= std::time::Duration::from_millis(550), "{ok:?}");
    assert_eq!(
        slow.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let stats = admin_get(&app, "/stats?filter=cluster.cb.").await.body;
    assert!(
        stats.contains("cluster.cb.upstream_rq_pending_overflow: 3"),
        "{stats}"
    );
}

fn cors_request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "h");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn cors_preflights_are_answered_and_responses_get_cors_headers() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = r#"            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{exact: "https://app.example"}, {suffix: ".trusted.example"}]
                  allow_methods: "GET,POST"
                  allow_headers: "content-type"
                  expose_headers: "x-upstream"
                  max_age: "300"
                  allow_credentials: true
              routes:
              - match: {prefix: /strict}
                route: {cluster: cors_up}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    forward_not_matching_preflights: false
              - match: {prefix: /off}
                route: {cluster: cors_up}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    filter_enabled: {default_value: {numerator: 0}}
              - match: {prefix: /missing}
                route: {cluster: no_such_cluster}
              - match: {prefix: /}
                route: {cluster: cors_up}
"#;
    let filters = r#"          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
"#;
    let app = sluice(&bootstrap(
        &http_listener("cors", vh, filters),
        &cluster("cors_up", &[a.addr], ""),
    ))
    .await;
    let mut c = H1::connect(app.listener_address("cors").unwrap()).await;
    let served = || a.requests.load(std::sync::atomic::Ordering::SeqCst);

    // A preflight from an allowed origin is answered by the proxy.
    let before = served();
    let r = c
        .send(cors_request(
            "OPTIONS",
            "/api",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(served(), before, "preflight must not reach the upstream");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(r.headers["access-control-allow-headers"], "content-type");
    assert_eq!(r.headers["access-control-max-age"], "300");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(r.headers["server"], "envoy");
    assert!(r.body.is_empty());

    // An actual request from an allowed origin: forwarded, CORS headers on the response.
    let r = c
        .send(cors_request(
            "GET",
            "/api",
            &[("origin", "https://x.trusted.example")],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("name"), Some("a"));
    assert_eq!(r.seen_header("origin"), Some("https://x.trusted.example"));
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://x.trusted.example"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(r.headers["access-control-expose-headers"], "x-upstream");

    // A non-matching origin gets no CORS headers; its preflight goes upstream.
    let r = c
        .send(cors_request(
            "GET",
            "/api",
            &[("origin", "https://evil.example")],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
    let evil_preflight = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    let r = c
        .send(cors_request("OPTIONS", "/api", &evil_preflight))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("method"), Some("OPTIONS"), "forwarded upstream");
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    // forward_not_matching_preflights: false on the route: answered, without allow-origin.
    let before = served();
    let r = c
        .send(cors_request("OPTIONS", "/strict", &evil_preflight))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(served(), before);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert_eq!(r.headers["access-control-allow-methods"], "GET,POST");

    // Disabled on the route: everything passes through untouched.
    let r = c
        .send(cors_request(
            "OPTIONS",
            "/off",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
            ],
        ))
        .await;
    assert_eq!(r.field("method"), Some("OPTIONS"));
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    // Local replies after the filter (cluster not found) carry the headers too, as in Envoy.
    let r = c
        .send(cors_request(
            "GET",
            "/missing",
            &[("origin", "https://app.example")],
        ))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );

    // Without an Origin header nothing changes.
    let r = c.send(cors_request("GET", "/api", &[])).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    let stats = sluice::stats::registry();
    assert!(stats.counter("http.cors.cors.origin_valid").get() >= 3);
    assert!(stats.counter("http.cors.cors.origin_invalid").get() >= 3);
}

#[tokio::test]
async fn idle_downstream_connections_close_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fast = upstream("fast", Behaviour::Echo).await;
    let slow = upstream("slow", Behaviour::Delay(900)).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /slow}\n                route: {cluster: idle_slow}\n              - match: {prefix: /}\n                route: {cluster: idle_fast}\n";
    let listener = http_listener("idle", vh, "").replace(
        "          stat_prefix: idle\n",
        "          stat_prefix: idle\n          common_http_protocol_options: {idle_timeout: 0.3s}\n",
    );
    let app = sluice(&bootstrap(
        &listener,
        &format!(
            "{}{}",
            cluster("idle_fast", &[fast.addr], ""),
            cluster("idle_slow", &[slow.addr], "")
        ),
    ))
    .await;
    let addr = app.listener_address("idle").unwrap();

    async fn exchange(s: &mut tokio::net::TcpStream, path: &str) -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: h\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The echo body ends with the version line; enough to know the response is complete.
        while !String::from_utf8_lossy(&got).contains("version=") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    // Requests keep the connection alive; once it idles past 0.3 s the proxy closes it.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        assert!(exchange(&mut s, "/").await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A request in flight longer than the idle timeout is not cut off.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = exchange(&mut s, "/slow").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("name=slow"), "{r}");

    let stats = admin_get(&app, "/stats?filter=downstream_cx_idle_timeout").await;
    let n: u64 = stats
        .body
        .lines()
        .find(|l| l.starts_with("http.idle.downstream_cx_idle_timeout:"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", stats.body));
    assert!(n >= 1, "{}", stats.body);
}

/// A connection keeps one timer for its requests (HTTP/1.1) or hands it from stream to stream
/// (HTTP/2): each request still times out at its own deadline, whether it comes before the
/// timer's last one (the timer is filed again) or after it (the timer passes the old one by).
#[tokio::test]
async fn a_connections_kept_timer_fires_at_each_requests_own_deadline() {
    // The upstream answers after the delay in milliseconds that ends the path.
    let up = slow_upstream(
        |path| path.rsplit('/').next().unwrap().parse().unwrap(),
        "done",
    )
    .await;
    let vh = r#"            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /long/}
                route: {cluster: kept_up, timeout: 10s}
              - match: {prefix: /short/}
                route: {cluster: kept_up, timeout: 0.3s}
              - match: {prefix: /mid/}
                route: {cluster: kept_up, timeout: 0.8s}
              - match: {prefix: /idle/}
                route: {cluster: kept_up, timeout: 0s, idle_timeout: 0.3s}
"#;
    let app = sluice(&bootstrap(
        &http_listener("kept", vh, ""),
        &cluster("kept_up", &[up], ""),
    ))
    .await;
    let addr = app.listener_address("kept").unwrap();
    enum Conn {
        H1(H1),
        H2(H2),
    }
    for mut c in [
        Conn::H1(H1::connect(addr).await),
        Conn::H2(H2::connect(addr).await),
    ] {
        let proto = if matches!(c, Conn::H1(_)) { "h1" } else { "h2" };
        let mut get = async |path: &str| match &mut c {
            Conn::H1(c) => c.get("h", path).await,
            Conn::H2(c) => c.get("h", path).await,
        };
        let check = |r: Got, want: (u16, &str), what: &str| {
            assert_eq!((r.status, r.body.as_str()), want, "{proto}: {what}");
        };
        check(get("/long/0").await, (200, "done"), "first request");
        // An earlier deadline than the timer's last one.
        check(
            get("/short/1500").await,
            (504, "upstream request timeout"),
            "earlier deadline",
        );
        // The timer fired; it is set again.
        check(get("/long/0").await, (200, "done"), "after a timeout");
        check(
            get("/short/1500").await,
            (504, "upstream request timeout"),
            "earlier deadline again",
        );
        // A later deadline than the timer's last one: not the old deadline, the new one.
        check(get("/short/0").await, (200, "done"), "short and answered");
        let t = std::time::Instant::now();
        check(
            get("/mid/1500").await,
            (504, "upstream request timeout"),
            "later deadline",
        );
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(750),
            "{proto}: {:?}",
            t.elapsed()
        );
        // The stream idle timeout uses the same timer.
        check(
            get("/idle/1500").await,
            (408, "stream timeout"),
            "idle timeout",
        );
        check(get("/long/0").await, (200, "done"), "last request");
    }
}
