//! Access logs end to end: Istio's text format and a JSON format on an HTTP listener, with
//! response flags for local replies, and a TCP proxy log with byte counts. Lines are read back
//! from the files Sluice writes.

mod support;

use std::path::PathBuf;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "sluice-access-{tag}-{}-{}.log",
        std::process::id(),
        fastrand::u64(..)
    ));
    let _ = std::fs::remove_file(&p);
    p
}

const ISTIO_FORMAT: &str = r#"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"#;

#[tokio::test]
async fn http_and_tcp_access_logs() {
    let up = upstream("up", Behaviour::Echo).await;
    let echo = tcp_echo().await;
    let text = temp_file("text");
    let json = temp_file("json");
    let tcp = temp_file("tcp");
    let cfg = format!(
        r#"static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {text}
              log_format: {{text_format_source: {{inline_string: "{ISTIO_FORMAT}"}}}}
          - name: envoy.access_loggers.file
            filter: {{status_code_filter: {{comparison: {{op: GE, value: {{default_value: 400, runtime_key: k}}}}}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {json}
              log_format:
                json_format: {{code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", path: "%REQ(:PATH)%", bytes_in: "%BYTES_RECEIVED%", cluster: "%UPSTREAM_CLUSTER%"}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: to-up
                match: {{prefix: /ok}}
                route: {{cluster: up}}
              - match: {{prefix: /dead}}
                route: {{cluster: dead}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {tcp}
              log_format: {{text_format_source: {{inline_string: "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS%\n"}}}}
  clusters:
{}{}{}"#,
        cluster("up", &[up.addr], ""),
        cluster("dead", &["127.0.0.1:9".parse().unwrap()], ""),
        cluster("echo", &[echo], ""),
        text = text.display(),
        json = json.display(),
        tcp = tcp.display(),
    );
    let app = sluice(&cfg).await;
    let web = app.listener_address("web").unwrap();
    let mut c = H1::connect(web).await;
    let r = c
        .send(
            http::Request::post("/ok/1")
                .header("host", "shop")
                .header("user-agent", "probe/1")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"hello",
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let sent = r.body.len();
    let rid = r.seen_header("x-request-id").unwrap().to_string();
    assert_eq!(c.get("shop", "/nowhere").await.status, 404);
    assert_eq!(c.get("shop", "/dead").await.status, 503);

    let t = log_lines(&text, 3).await;
    let ok = &t[0];
    assert!(
        ok.contains("\"POST /ok/1 HTTP/1.1\" 200 - via_upstream - \"-\" 5 "),
        "{ok}"
    );
    assert!(ok.contains(&format!(" 5 {sent} ")), "{ok}");
    assert!(
        ok.contains(&format!(
            "\"probe/1\" \"{rid}\" \"shop\" \"{}\" up - {web} ",
            up.addr
        )),
        "{ok}"
    );
    assert!(ok.ends_with(" - to-up"), "{ok}");
    assert!(
        t[1].contains("\"GET /nowhere HTTP/1.1\" 404 NR"),
        "{}",
        t[1]
    );
    assert!(t[2].contains("\"GET /dead HTTP/1.1\" 503 UF"), "{}", t[2]);
    assert!(t[2].contains(" dead "), "{}", t[2]);

    // The JSON log has only the failures (status_code_filter >= 400), with typed numbers.
    let j = log_lines(&json, 2).await;
    let a: serde_json::Value = serde_json::from_str(&j[0]).unwrap();
    let b: serde_json::Value = serde_json::from_str(&j[1]).unwrap();
    assert_eq!(a["code"], 404);
    assert_eq!(a["flags"], "NR");
    assert!(a["cluster"].is_null());
    assert_eq!(
        (b["code"].clone(), b["flags"].clone()),
        (503.into(), "UF".into())
    );
    assert_eq!(b["cluster"], "dead");
    assert_eq!(b["bytes_in"], 0);

    // Requests the HTTP/1 codec rejects are logged too: no request line, the status, the
    // codec's reason, and DPE for its protocol errors.
    let rejected: [(&[u8], &str, &str); 3] = [
        (
            b"POST /x HTTP/1.1\r\nhost: shop\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 400",
            "\"- - HTTP/1.1\" 400 DPE http1.content_length_and_chunked_not_allowed - \"-\" 0 11 ",
        ),
        (
            b"GET /x HTTP/1.0\r\nhost: shop\r\n\r\n",
            "HTTP/1.1 426",
            "\"- - HTTP/1.0\" 426 - low_version - \"-\" 0 16 ",
        ),
        (
            b"GET /x HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400",
            "\"- - HTTP/1.1\" 400 - missing_host_header - \"-\" 0 11 ",
        ),
    ];
    for (raw, status, _) in rejected {
        let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back).await;
        assert!(
            back.starts_with(status.as_bytes()),
            "{}",
            String::from_utf8_lossy(&back)
        );
    }
    let t = log_lines(&text, 6).await;
    for (i, (_, _, want)) in rejected.iter().enumerate() {
        let line = &t[3 + i];
        assert!(line.contains(want), "{line}\nwants {want}");
        assert!(line.contains(&format!(" {web} ")), "{line}");
    }
    let j = log_lines(&json, 5).await;
    let c: serde_json::Value = serde_json::from_str(&j[2]).unwrap();
    assert_eq!(
        (c["code"].clone(), c["flags"].clone()),
        (400.into(), "DPE".into())
    );
    assert!(c["path"].is_null(), "{c}");

    // TCP: one line when the connection ends, with the bytes each way.
    let mut s = tokio::net::TcpStream::connect(app.listener_address("tcp").unwrap())
        .await
        .unwrap();
    s.write_all(b"0123456789").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"0123456789");
    let l = log_lines(&tcp, 1).await;
    assert_eq!(l[0], format!("echo {echo} 10 10 -"));
    for p in [&text, &json, &tcp] {
        let _ = std::fs::remove_file(p);
    }
}
