//! End-to-end: the admin endpoint over real HTTP — Prometheus output with Envoy's default tag
//! extraction, histograms, `/stats` formats and selections, `/reset_counters`, `/memory`,
//! `/certs`, `/runtime`, `/logging`, `/healthcheck/*`, `/hot_restart_version`, `/help`.
//!
//! The stats registry is process-wide: each test uses its own listener and cluster names.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "outbound|9080||adm.default.svc.cluster.local";

async fn admin_post(app: &sluice::app::App, path: &str) -> Got {
    H1::connect(app.admin_address)
        .await
        .send(
            http::Request::post(path)
                .header("host", "admin")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
}

fn vh(cluster: &str) -> String {
    format!("            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                route: {{cluster: \"{cluster}\"}}\n")
}

#[tokio::test]
async fn stats_formats_tags_histograms_and_reset() {
    let a = upstream("a", Behaviour::Echo).await;
    let echo = tcp_echo().await;
    let cfg = format!(
        "static_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        http_listener("adm_l", &vh(CLUSTER), ""),
        tcp_listener("adm_tcp", &[("adm_tcp_up", 1)]),
        cluster(CLUSTER, &[a.addr], ""),
        cluster("adm_tcp_up", &[echo], ""),
    );
    let app = sluice(&cfg).await;
    let l = app.listener_address("adm_l").unwrap();
    let mut c = H1::connect(l).await;
    for _ in 0..3 {
        assert_eq!(c.get("h", "/").await.status, 200);
    }
    let mut t = tokio::net::TcpStream::connect(app.listener_address("adm_tcp").unwrap())
        .await
        .unwrap();
    t.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    t.read_exact(&mut buf).await.unwrap();
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest).await;
    drop(t);
    // The TCP proxy counts its bytes when the connection ends.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Prometheus: Envoy's tag-extracted families, one TYPE line each.
    let prom = admin_get(&app, "/stats/prometheus").await;
    assert_eq!(prom.status, 200);
    assert!(prom.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let p = prom.body;
    for line in [
        format!("envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{CLUSTER}\"}} 3"),
        format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",envoy_cluster_name=\"{CLUSTER}\"}} 3"),
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"adm_l\"} 3".into(),
        "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"adm_l\"} 3".into(),
        format!("envoy_listener_downstream_cx_total{{envoy_listener_address=\"127.0.0.1_{}\"}} 1", l.port()),
        "envoy_tcp_downstream_cx_total{envoy_tcp_prefix=\"adm_tcp\"} 1".into(),
        "envoy_tcp_downstream_cx_tx_bytes_total{envoy_tcp_prefix=\"adm_tcp\"} 4".into(),
        format!("envoy_cluster_upstream_rq_time_count{{envoy_cluster_name=\"{CLUSTER}\"}} 3"),
        format!("envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{CLUSTER}\",le=\"+Inf\"}} 3"),
        "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"adm_l\"} 3".into(),
        "envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name=\"adm_tcp_up\"} 1".into(),
        "# TYPE envoy_cluster_upstream_rq_time histogram".into(),
        "# TYPE envoy_cluster_membership_total gauge".into(),
    ] {
        assert!(p.lines().any(|l| l == line), "missing {line}\n{p}");
    }
    assert!(p.contains(&format!(
        "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{CLUSTER}\",le=\"0.5\"}} "
    )));
    let mut types: Vec<&str> = p.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), n, "one TYPE line per family");
    // Every sample line belongs to the family declared above it.
    let mut family = "";
    for line in p.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            family = t.split(' ').next().unwrap();
        } else {
            assert!(line.starts_with(family), "{line} outside {family}");
        }
    }
    // `?format=prometheus` on /stats is the same exposition.
    let p2 = admin_get(&app, "/stats?format=prometheus").await.body;
    assert!(p2.contains("# TYPE envoy_cluster_upstream_rq_total counter\n"));

    // Text: Envoy's names; histograms as quantile summaries after the counters and gauges.
    let text = admin_get(&app, "/stats").await.body;
    assert!(
        text.contains(&format!("cluster.{CLUSTER}.upstream_rq_total: 3\n")),
        "{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with(&format!("cluster.{CLUSTER}.upstream_rq_time: ")))
        .expect("histogram line");
    assert!(summary.contains(": P0(nan,") && summary.contains(" P99.9(nan,"));
    assert!(text.contains("http.adm_l.downstream_rq_time: P0(nan,"));

    // JSON.
    let j: serde_json::Value =
        serde_json::from_str(&admin_get(&app, "/stats?format=json").await.body).unwrap();
    let stats = j["stats"].as_array().unwrap();
    assert!(stats
        .iter()
        .any(|s| s["name"] == format!("cluster.{CLUSTER}.upstream_rq_total") && s["value"] == 3));
    let hs = &stats.last().unwrap()["histograms"];
    assert_eq!(hs["supported_quantiles"].as_array().unwrap().len(), 10);
    assert!(hs["computed_quantiles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == "http.adm_l.downstream_rq_time"
            && h["values"][0]["cumulative"].is_number()));

    // filter is a regex (percent-encoded in the query).
    let f = admin_get(
        &app,
        "/stats?filter=%5Ehttp%5C.adm_l%5C.downstream_rq_%28total%7C2xx%29%24",
    )
    .await
    .body;
    assert_eq!(
        f,
        "http.adm_l.downstream_rq_2xx: 3\nhttp.adm_l.downstream_rq_total: 3\n"
    );
    let bad = admin_get(&app, "/stats?filter=(").await;
    assert_eq!(bad.status, 400);
    // usedonly: nothing that was never written.
    let used = admin_get(&app, "/stats?usedonly&filter=adm_l").await.body;
    assert!(used.contains("http.adm_l.downstream_rq_total: 3"));
    assert!(!used.contains("downstream_rq_5xx"), "{used}");
    assert!(!used.lines().any(|l| l.ends_with(": 0")), "{used}");
    let all = admin_get(&app, "/stats?filter=adm_l").await.body;
    assert!(all.contains("http.adm_l.downstream_rq_5xx: 0"));
    // type=: one kind of stat.
    let h = admin_get(&app, "/stats?type=Histograms&filter=adm_l")
        .await
        .body;
    assert!(
        h.starts_with("http.adm_l.downstream_rq_time: P0(nan,"),
        "{h}"
    );
    assert_eq!(h.lines().count(), 1, "{h}");
    let g = admin_get(&app, "/stats?type=Gauges&filter=adm_l")
        .await
        .body;
    assert_eq!(
        g,
        "http.adm_l.downstream_cx_active: 1\nhttp.adm_l.downstream_rq_active: 0\n"
    );
    assert_eq!(admin_get(&app, "/stats?type=Nope").await.status, 400);

    // /reset_counters: counters to zero, gauges and histograms keep their values.
    assert_eq!(admin_get(&app, "/reset_counters").await.status, 405);
    assert_eq!(admin_post(&app, "/reset_counters").await.status, 200);
    let after = admin_get(&app, "/stats?filter=adm").await.body;
    assert!(
        after.contains(&format!("cluster.{CLUSTER}.upstream_rq_total: 0\n")),
        "{after}"
    );
    assert!(after.contains("http.adm_l.downstream_rq_total: 0\n"));
    assert!(after.contains(&format!("cluster.{CLUSTER}.membership_total: 1\n")));
    assert!(after.contains("http.adm_l.downstream_rq_time: P0(nan,"));
    assert_eq!(c.get("h", "/").await.status, 200);
    let again = admin_get(&app, "/stats?filter=adm_l%5C.downstream_rq_total")
        .await
        .body;
    assert_eq!(again, "http.adm_l.downstream_rq_total: 1\n");
}

#[tokio::test]
async fn operator_endpoints_have_envoys_shapes() {
    let a = upstream("a", Behaviour::Echo).await;
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("ops_l", &vh("ops_up"), ""),
        cluster("ops_up", &[a.addr], ""),
    );
    let app = sluice(&cfg).await;

    let mem: serde_json::Value =
        serde_json::from_str(&admin_get(&app, "/memory").await.body).unwrap();
    for k in [
        "allocated",
        "heap_size",
        "pageheap_unmapped",
        "pageheap_free",
        "total_thread_cache",
        "total_physical_bytes",
    ] {
        let v: u64 = mem[k].as_str().expect(k).parse().expect(k);
        if k == "allocated" || k == "total_physical_bytes" {
            assert!(v > 0, "{k}: {mem}");
        }
    }
    let certs: serde_json::Value =
        serde_json::from_str(&admin_get(&app, "/certs").await.body).unwrap();
    assert_eq!(certs, serde_json::json!({"certificates": []}));
    let rt: serde_json::Value =
        serde_json::from_str(&admin_get(&app, "/runtime").await.body).unwrap();
    assert_eq!(rt, serde_json::json!({"entries": {}, "layers": []}));
    assert_eq!(
        admin_get(&app, "/hot_restart_version").await.body,
        "disabled\n"
    );
    let logging = admin_get(&app, "/logging").await;
    assert_eq!(logging.status, 200);
    assert!(
        logging.body.starts_with("active loggers:\n  "),
        "{}",
        logging.body
    );
    // POST without parameters lists them too (istioctl proxy-config log).
    assert!(admin_post(&app, "/logging")
        .await
        .body
        .starts_with("active loggers:"));

    // /help lists every path, and every listed path answers (POST-only ones with 405 on GET).
    let help = admin_get(&app, "/help").await.body;
    assert!(help.starts_with("admin commands are:\n"));
    for (path, _) in sluice::admin::HELP {
        assert!(help.contains(&format!("  {path}: ")), "{path} not in /help");
        if ["/quitquitquit", "/drain_listeners"].contains(path) {
            continue;
        }
        let r = admin_get(&app, path).await;
        assert_ne!(r.status, 404, "{path}");
    }
    for path in ["/reset_counters", "/healthcheck/fail", "/healthcheck/ok"] {
        assert_eq!(admin_get(&app, path).await.status, 405, "{path}");
    }
}

#[tokio::test]
async fn healthcheck_fail_reports_draining_and_keeps_serving() {
    let a = upstream("a", Behaviour::Echo).await;
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("hc_l", &vh("hc_up"), ""),
        cluster("hc_up", &[a.addr], ""),
    );
    let app = sluice(&cfg).await;
    let state = |body: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["state"].as_str().unwrap().to_string()
    };
    assert_eq!(admin_get(&app, "/ready").await.status, 200);
    assert_eq!(admin_post(&app, "/healthcheck/fail").await.status, 200);
    let r = admin_get(&app, "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    assert_eq!(
        state(&admin_get(&app, "/server_info").await.body),
        "DRAINING"
    );
    // Traffic is still served: only health checkers are told to go away.
    let mut c = H1::connect(app.listener_address("hc_l").unwrap()).await;
    assert_eq!(c.get("h", "/").await.status, 200);
    assert_eq!(admin_post(&app, "/healthcheck/ok").await.status, 200);
    let r = admin_get(&app, "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    assert_eq!(state(&admin_get(&app, "/server_info").await.body), "LIVE");
}
