//! Every file of Istio's own test config corpus and samples loads without panics, translates for
//! sidecars and gateways, and every generated resource is accepted by Sluice's State (the same
//! update path as xDS). Rejections are exactly the ones listed here, with their reasons.

use std::path::PathBuf;

use sluice::istio::{self, Interception, Level, Node, Role};

fn conformance(dir: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(dir);
    assert!(
        p.is_dir(),
        "conformance data missing at {} (expected beside the checkout)",
        p.display()
    );
    p
}

fn nodes() -> Vec<Node> {
    let mut out = Vec::new();
    for ns in ["default", "testns", "none", "seexamples", "exampleegressgw"] {
        out.push(Node::sidecar(ns));
        out.push(Node {
            interception: Interception::None,
            ..Node::sidecar(ns)
        });
    }
    let mut app = Node::sidecar("default");
    app.labels.insert("app".into(), "reviews".into());
    app.labels.insert("version".into(), "v1".into());
    out.push(app);
    out.push(Node {
        role: Role::Router,
        namespace: "istio-system".into(),
        ..Default::default()
    });
    out
}

/// Validates everything with the model constructors State uses (without a runtime: DNS
/// clusters would start resolving names from the data). Returns the rejections.
fn apply(r: &istio::Resources) -> Vec<String> {
    use sluice::model::cluster::{endpoints, Cluster, Discovery};
    use sluice::model::listener::Listener;
    use sluice::route::RouteTable;
    let mut rej = Vec::new();
    for c in &r.clusters {
        if let Err(e) = Cluster::from_proto(c) {
            rej.push(format!("{}: {e}", c.name));
        }
    }
    for e in &r.endpoints {
        if let Err((f, m)) = endpoints(e, Discovery::Eds) {
            rej.push(format!("{}: {f}: {m}", e.cluster_name));
        }
    }
    for rc in &r.routes {
        if let Err(e) = RouteTable::from_proto(rc) {
            rej.push(format!("{}: {e}", rc.name));
        }
    }
    for l in &r.listeners {
        if let Err(e) = Listener::from_proto(l) {
            rej.push(format!("{}: {e}", l.name));
        }
    }
    rej
}

fn check_dir(dir: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for f in istio::load::config_files(&conformance(dir)).unwrap() {
        let cfg = istio::load_path(&f).unwrap();
        for node in nodes() {
            let r = istio::translate(&cfg, &node);
            assert!(r.skipped.is_empty(), "{}: {:?}", f.display(), r.skipped);
            let rej = apply(&r);
            assert!(rej.is_empty(), "{} for {:?}: {rej:#?}", f.display(), node);
        }
        for m in &cfg.messages {
            if m.level == Level::Error {
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                errors.push(format!("{name}: {m}"));
            }
        }
    }
    errors
}

#[test]
fn corpus_loads_translates_and_applies() {
    let errors = check_dir("istio-config-corpus");
    for e in &errors {
        eprintln!("{e}");
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn samples_load_translate_and_apply() {
    let errors = check_dir("istio-samples");
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn whole_corpus_at_once() {
    let cfg = istio::load_path(&conformance("istio-config-corpus")).unwrap();
    for m in &cfg.messages {
        eprintln!("{m}");
    }
    for node in nodes() {
        let r = istio::translate(&cfg, &node);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let rej = apply(&r);
        assert!(rej.is_empty(), "{node:?}: {rej:#?}");
    }
}

/// Istio's CORS corpus file: the policy lands in the route as the cors filter's per-route config,
/// the listener runs the cors filter, and the compiled route answers a preflight as Envoy would.
#[test]
fn cors_corpus_file_translates_and_answers_preflights() {
    use sluice::http::cors::Decision;
    let cfg = istio::load_path(
        &conformance("istio-config-corpus").join("rule-default-route-cors-policy.yaml"),
    )
    .unwrap();
    assert!(
        cfg.messages.iter().all(|m| m.level != Level::Error),
        "{:?}",
        cfg.messages
    );
    let r = istio::translate(&cfg, &Node::sidecar("testns"));
    assert!(apply(&r).is_empty());
    let l = sluice::config::proto::to_json(r.listener("0.0.0.0_80").unwrap());
    assert!(l
        .to_string()
        .contains("envoy.extensions.filters.http.cors.v3.Cors"));
    let rc = r.routes.iter().find(|rc| rc.name == "80").unwrap();
    let table = sluice::route::RouteTable::from_proto(rc).unwrap();
    let req = |origin: &str| {
        http::Request::options("/")
            .header("host", "cors.test.istio.io")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let parts = req("http://foo.example");
    let sel = table.select(&sluice::route::RequestView::from_parts(&parts), 0);
    let Decision::Preflight(h) = sel.cors_policies("envoy.filters.http.cors").decide(
        &parts.method,
        &parts.headers,
        0,
        0,
        None,
    ) else {
        panic!("preflight from http://foo.example must be answered");
    };
    assert_eq!(h["access-control-allow-origin"], "http://foo.example");
    assert_eq!(h["access-control-allow-methods"], "POST,GET,OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert_eq!(h["access-control-max-age"], "300");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let parts = req("http://bar.example");
    let sel = table.select(&sluice::route::RequestView::from_parts(&parts), 0);
    assert!(matches!(
        sel.cors_policies("envoy.filters.http.cors").decide(
            &parts.method,
            &parts.headers,
            0,
            0,
            None
        ),
        Decision::Pass
    ));
}
