//! Translation shape tests: what each Istio field becomes in the generated Envoy resources.

use serde_json::Value;

use super::*;
use crate::config::proto::to_json;

fn load(yaml: &str) -> Loaded {
    let mut l = Loaded::default();
    load::load_str("t.yaml", yaml, &mut l);
    l
}

fn tr(yaml: &str, node: &Node) -> (Resources, Value) {
    let r = translate(&load(yaml), node);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let j = r.to_json();
    (r, j)
}

/// A sidecar in `ns` with the workload labels `labels`.
fn labelled_sidecar(ns: &str, labels: &[(&str, &str)]) -> Node {
    let mut node = Node::sidecar(ns);
    for (k, v) in labels {
        node.labels.insert(k.to_string(), v.to_string());
    }
    node
}

fn vhost<'a>(j: &'a Value, rc: &str, name: &str) -> &'a Value {
    j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rc)
        .unwrap_or_else(|| panic!("no route config {rc}"))["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vhost {name}"))
}

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec:
  clusterIP: 10.0.0.7
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp-db, port: 5432}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: ns1}
subsets:
- addresses: [{ip: 10.1.0.1, targetRef: {kind: Pod, name: web-a}}, {ip: 10.1.0.2}]
  ports: [{name: http, port: 8080}, {name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: ns1, labels: {app: web, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: ns1}
spec:
  host: web
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 7, connectTimeout: 2s, tcpKeepalive: {probes: 3, time: 2h, interval: 75s}}, http: {http2MaxRequests: 9}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 8ms, baseEjectionTime: 1m}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
"#;

#[test]
fn clusters_endpoints_and_policies() {
    let (r, _) = tr(SVC, &Node::sidecar("ns1"));
    let c = to_json(r.cluster("outbound|80||web.ns1.svc.cluster.local").unwrap());
    assert_eq!(c["type"], "EDS");
    assert_eq!(c["connect_timeout"], "2s");
    assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_connections"], 7);
    assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_requests"], 9);
    let ka = &c["upstream_connection_options"]["tcp_keepalive"];
    assert_eq!(
        (
            &ka["keepalive_probes"],
            &ka["keepalive_time"],
            &ka["keepalive_interval"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(7200),
            &serde_json::json!(75)
        ),
        "{c}"
    );
    assert_eq!(c["outlier_detection"]["consecutive_5xx"], 3);
    assert_eq!(c["outlier_detection"]["interval"], "0.008s");
    // minHealthPercent defaults to 0: no panic mode, as istiod sets it.
    // (proto3 JSON leaves the zero value out: the field is present and empty.)
    assert!(c["common_lb_config"]["healthy_panic_threshold"].is_object());
    assert!(c["common_lb_config"]["healthy_panic_threshold"]["value"].is_null());
    let v1 = to_json(
        r.cluster("outbound|80|v1|web.ns1.svc.cluster.local")
            .unwrap(),
    );
    assert_eq!(v1["lb_policy"], "RING_HASH");
    let eps = |n: &str| {
        let la = r.endpoints.iter().find(|e| e.cluster_name == n).unwrap();
        la.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>()
    };
    assert_eq!(eps("outbound|80||web.ns1.svc.cluster.local"), 2);
    assert_eq!(eps("outbound|80|v1|web.ns1.svc.cluster.local"), 1);
    assert!(r.cluster("BlackHoleCluster").is_some());
    assert!(r.cluster("PassthroughCluster").is_some());
    // TCP port with a VIP: its own VIP_PORT listener.
    assert!(r.listener("10.0.0.7_5432").is_some());
    assert!(r.listener("0.0.0.0_80").is_some());
    assert!(r.listener("virtualOutbound").is_some());
}

#[test]
fn short_names_and_consistent_hash_route() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web, subset: v1}}]
"#;
    let (_, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let vh = vhost(&j, "80", "web.ns1.svc.cluster.local:80");
    let d: Vec<&str> = vh["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    for want in [
        "web",
        "web:80",
        "web.ns1",
        "web.ns1.svc",
        "web.ns1.svc.cluster.local",
        "10.0.0.7",
        "10.0.0.7:80",
    ] {
        assert!(d.contains(&want), "{want} in {d:?}");
    }
    let rt = &vh["routes"][0]["route"];
    assert_eq!(rt["cluster"], "outbound|80|v1|web.ns1.svc.cluster.local");
    assert_eq!(rt["hash_policy"][0]["header"]["header_name"], "x-user");
    // From another namespace: no bare short name.
    let (_, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("other"));
    let vh = vhost(&j, "80", "web.ns1.svc.cluster.local:80");
    assert!(!vh["domains"].as_array().unwrap().iter().any(|d| d == "web"));
}

#[test]
fn http_route_features() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - name: redirect
    match: [{uri: {exact: /old}, method: {exact: GET}}]
    redirect: {uri: /new, authority: b.example, redirectCode: 302}
  - match: [{uri: {regex: "/r/[0-9]+"}, ignoreUriCase: true, queryParams: {q: {exact: "1"}}, withoutHeaders: {x-no: {}}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /api}, headers: {x-v: {prefix: "2"}}}]
    rewrite: {uri: /v2, authority: api.internal}
    timeout: 1.5s
    retries: {attempts: 4, perTryTimeout: 200ms, retryOn: "5xx,503"}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
      response: {remove: [server]}
    route:
    - destination: {host: web, subset: v1}
      weight: 30
      headers: {request: {set: {x-d: "1"}}}
    - destination: {host: web, port: {number: 80}}
      weight: 70
  - match: [{sourceLabels: {app: nobody}}]
    route: [{destination: {host: web}}]
  - fault: {delay: {fixedDelay: 2s, percentage: {value: 12.5}}, abort: {httpStatus: 503, percentage: {value: 1}}}
    route: [{destination: {host: web}}]
    retries: {attempts: 0}
"#;
    let (r, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let routes = &vhost(&j, "80", "web.ns1.svc.cluster.local:80")["routes"];
    let r0 = &routes[0];
    assert_eq!(r0["name"], "redirect");
    assert_eq!(r0["match"]["path"], "/old");
    assert_eq!(r0["match"]["headers"][0]["name"], ":method");
    assert_eq!(r0["redirect"]["path_redirect"], "/new");
    assert_eq!(r0["redirect"]["response_code"], "FOUND");
    let r1 = &routes[1];
    // As istiod: ignoreUriCase is case_sensitive false, which Envoy ignores for regexes.
    assert_eq!(r1["match"]["safe_regex"]["regex"], "/r/[0-9]+");
    assert_eq!(r1["match"]["case_sensitive"], false);
    assert_eq!(
        r1["match"]["query_parameters"][0]["string_match"]["exact"],
        "1"
    );
    assert_eq!(r1["match"]["headers"][0]["invert_match"], true);
    assert_eq!(r1["direct_response"]["status"], 418);
    let r2 = &routes[2];
    assert_eq!(r2["route"]["prefix_rewrite"], "/v2");
    assert_eq!(r2["route"]["host_rewrite_literal"], "api.internal");
    assert_eq!(r2["route"]["timeout"], "1.500s");
    assert_eq!(r2["route"]["max_grpc_timeout"], "1.500s");
    assert_eq!(r2["route"]["retry_policy"]["num_retries"], 4);
    assert_eq!(
        r2["route"]["retry_policy"]["retry_on"],
        "5xx,retriable-status-codes"
    );
    assert_eq!(
        r2["route"]["retry_policy"]["retriable_status_codes"][0],
        503
    );
    assert_eq!(r2["route"]["retry_policy"]["per_try_timeout"], "0.200s");
    let wc = &r2["route"]["weighted_clusters"]["clusters"];
    assert_eq!(wc[0]["name"], "outbound|80|v1|web.ns1.svc.cluster.local");
    assert_eq!(wc[0]["weight"], 30);
    assert_eq!(wc[0]["request_headers_to_add"][0]["header"]["key"], "x-d");
    assert_eq!(r2["request_headers_to_add"].as_array().unwrap().len(), 2);
    assert_eq!(r2["request_headers_to_remove"][0], "x-c");
    assert_eq!(r2["response_headers_to_remove"][0], "server");
    // sourceLabels not matching this node: the route is left out.
    let r3 = &routes[3];
    let f = &r3["typed_per_filter_config"]["envoy.filters.http.fault"];
    assert_eq!(f["delay"]["percentage"]["numerator"], 125000);
    assert_eq!(f["abort"]["http_status"], 503);
    assert!(r3["route"].get("retry_policy").is_none());
    // The generated configuration is accepted by Sluice's route engine.
    for rc in &r.routes {
        crate::route::RouteTable::from_proto(rc).unwrap();
    }
}

#[test]
fn delegate_and_gateway_binding() {
    let yaml = format!(
        r#"{SVC}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["ns1/a.example.com", "other/x.example.com"]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: gw-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: ns1}}
spec:
  hosts: [a.example.com, x.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{{uri: {{prefix: /web}}}}]
    delegate: {{name: child}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: child, namespace: ns1}}
spec:
  http:
  - match: [{{headers: {{x-canary: {{exact: "1"}}}}}}]
    route: [{{destination: {{host: web, subset: v1}}}}]
  - route: [{{destination: {{host: web}}}}]
"#
    );
    let mut node = Node {
        role: Role::Router,
        namespace: "istio-system".into(),
        ..Default::default()
    };
    node.labels.insert("istio".into(), "ingressgateway".into());
    let (r, j) = tr(&yaml, &node);
    assert!(r.listener("0.0.0.0_80").is_some());
    assert!(
        r.listener("0.0.0.0_443").is_none(),
        "TLS servers are skipped"
    );
    let vh = vhost(&j, "http.80", "a.example.com:80");
    let routes = vh["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["match"]["prefix"], "/web");
    assert_eq!(routes[0]["match"]["headers"][0]["name"], "x-canary");
    assert_eq!(
        routes[1]["route"]["cluster"],
        "outbound|80||web.ns1.svc.cluster.local"
    );
    // x.example.com is only exposed to namespace `other`.
    let rc = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "http.80")
        .unwrap();
    assert_eq!(rc["virtual_hosts"].as_array().unwrap().len(), 1);
    assert!(r.messages.iter().any(|m| m.field == "spec.servers[1]"));
}

#[test]
fn service_entries_and_special_services() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns1}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: ns1}
spec:
  hosts: ["*.wild.com"]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: ns1}
spec:
  hosts: [vm.internal]
  ports: [{number: 3306, name: mysql, protocol: TCP}]
  addresses: [240.0.0.1]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db1, namespace: ns1}
spec: {address: 10.9.9.9, labels: {app: db}, ports: {mysql: 3307}, weight: 3}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns1}
spec: {clusterIP: None, ports: [{name: tcp, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: out, namespace: ns1}
spec: {type: ExternalName, externalName: db.example.org, ports: [{name: http, port: 80}]}
"#;
    let (r, _) = tr(yaml, &Node::sidecar("ns1"));
    let t = |n: &str| to_json(r.cluster(n).unwrap_or_else(|| panic!("{n}")))["type"].clone();
    assert_eq!(t("outbound|443||api.example.com"), "STRICT_DNS");
    assert_eq!(t("outbound|8080||*.wild.com"), "ORIGINAL_DST");
    assert_eq!(t("outbound|3306||vm.internal"), "EDS");
    assert_eq!(t("outbound|5432||db.ns1.svc.cluster.local"), "ORIGINAL_DST");
    assert_eq!(t("outbound|80||out.ns1.svc.cluster.local"), "STRICT_DNS");
    let la = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|3306||vm.internal")
        .unwrap();
    let ep = to_json(la);
    assert_eq!(
        ep["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"],
        3307
    );
    assert_eq!(
        ep["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"],
        3
    );
    assert!(r.listener("240.0.0.1_3306").is_some());
    let tls = to_json(r.listener("0.0.0.0_443").unwrap());
    assert_eq!(
        tls["filter_chains"][0]["filter_chain_match"]["server_names"][0],
        "api.example.com"
    );
}

#[test]
fn inbound_for_selected_workload() {
    let mut node = Node::sidecar("ns1");
    node.labels.insert("app".into(), "web".into());
    let (r, _) = tr(SVC, &node);
    assert!(r.cluster("inbound|8080||").is_some());
    assert!(r.cluster("inbound|5432||").is_some());
    let l = to_json(r.listener("virtualInbound").unwrap());
    assert_eq!(l["address"]["socket_address"]["port_value"], 15006);
    assert_eq!(
        l["filter_chains"][0]["filter_chain_match"]["destination_port"],
        5432
    );
    assert!(r.cluster("inbound|8080||").is_some());
    let (r, _) = tr(SVC, &Node::sidecar("ns1"));
    assert!(r.cluster("inbound|8080||").is_none());
}

#[test]
fn reference_checks() {
    let yaml = format!(
        r#"{SVC}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bad, namespace: ns1}}
spec:
  hosts: [web]
  gateways: [nope]
  http:
  - route:
    - {{destination: {{host: web, subset: v9}}, weight: 60}}
    - {{destination: {{host: ghost}}, weight: 30}}
"#
    );
    let r = translate(&load(&yaml), &Node::sidecar("ns1"));
    let find = |f: &str| {
        r.messages
            .iter()
            .find(|m| m.field == f)
            .unwrap_or_else(|| panic!("{f}: {:#?}", r.messages))
    };
    assert!(find("spec.gateways[0]").text.contains("does not exist"));
    assert!(find("spec.http[0].route[0].destination.subset")
        .text
        .contains("v9"));
    assert!(find("spec.http[0].route[1].destination.host")
        .text
        .contains("ghost.ns1.svc.cluster.local"));
    assert!(find("spec.http[0].route").text.contains("sum to 90"));
    let m = find("spec.gateways[0]").to_string();
    assert!(
        m.starts_with("Error [t.yaml#4] (VirtualService ns1/bad) spec.gateways[0]:"),
        "{m}"
    );
}

#[test]
fn tcp_service_entry_without_address_gets_auto_vip_listener() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: ns1}
spec:
  hosts: [mongo.ext.example]
  ports: [{number: 27017, name: mongo, protocol: TCP}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;
    let (r, _) = tr(yaml, &Node::sidecar("ns1"));
    let vip = crate::istio::registry::auto_allocate(&Registry::build(&load(yaml).objects))
        ["mongo.ext.example"];
    assert_eq!(vip.octets()[..2], [240, 240]);
    assert!(
        r.listener(&format!("{vip}_27017")).is_some(),
        "no listener on the auto-allocated VIP {vip}"
    );
}

#[test]
fn mirror_becomes_request_mirror_policies() {
    let yaml = format!(
        r#"{SVC}
---
apiVersion: v1
kind: Service
metadata: {{name: shadow, namespace: ns1}}
spec:
  clusterIP: 10.0.0.9
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-mirror, namespace: ns1}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web}}}}]
    mirror: {{host: shadow}}
    mirrorPercentage: {{value: 25.0}}
"#
    );
    let (r, _) = tr(&yaml, &Node::sidecar("ns1"));
    let rc = to_json(r.route("80").unwrap());
    let vh = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("web.ns1"))
        .unwrap();
    let m = &vh["routes"][0]["route"]["request_mirror_policies"][0];
    assert!(m.is_object(), "{}", vh["routes"][0]);
    assert_eq!(m["cluster"], "outbound|80||shadow.ns1.svc.cluster.local");
    assert_eq!(m["runtime_fraction"]["default_value"]["numerator"], 250000);
    assert_eq!(
        m["runtime_fraction"]["default_value"]["denominator"],
        "MILLION"
    );
    // The route table compiles in Sluice's engine with the mirror.
    crate::route::RouteTable::from_proto(r.route("80").unwrap()).unwrap();
}

#[test]
fn cors_policy_as_istiod_translates_it() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /new}}]
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {prefix: "https://b"}, {regex: "https://.*\\.c\\.example"}]
      allowOrigin: ["https://ignored.example"]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-e]
      maxAge: 1h
      allowCredentials: false
      unmatchedPreflights: IGNORE
    route: [{destination: {host: web}}]
  - corsPolicy: {allowOrigin: ["https://old.example"]}
    route: [{destination: {host: web}}]
"#;
    let (r, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let routes = &vhost(&j, "80", "web.ns1.svc.cluster.local:80")["routes"];
    let c = &routes[0]["typed_per_filter_config"]["envoy.filters.http.cors"];
    assert_eq!(
        c["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    let origins = c["allow_origin_string_match"].as_array().unwrap();
    assert_eq!(
        origins.len(),
        3,
        "allowOrigin is ignored next to allowOrigins"
    );
    assert_eq!(origins[0]["exact"], "https://a.example");
    assert_eq!(origins[1]["prefix"], "https://b");
    assert_eq!(
        origins[2]["safe_regex"]["regex"],
        "https://.*\\.c\\.example"
    );
    assert_eq!(c["allow_methods"], "GET,POST");
    assert_eq!(c["allow_headers"], "x-a,x-b");
    assert_eq!(c["expose_headers"], "x-e");
    assert_eq!(c["max_age"], "3600");
    assert_eq!(c["allow_credentials"], false);
    assert_eq!(c["forward_not_matching_preflights"], false);
    assert_eq!(c["filter_enabled"]["default_value"]["numerator"], 100);
    let c = &routes[1]["typed_per_filter_config"]["envoy.filters.http.cors"];
    assert_eq!(
        c["allow_origin_string_match"][0]["exact"],
        "https://old.example"
    );
    assert_eq!(c["forward_not_matching_preflights"], true);
    // The connection managers run istiod's filters in istiod's order.
    let l = to_json(r.listener("0.0.0.0_80").unwrap());
    let names: Vec<&str> = l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    for rc in &r.routes {
        crate::route::RouteTable::from_proto(rc).unwrap();
    }
}

#[test]
fn cors_policy_validation() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: ns1}
spec:
  hosts: [web]
  http:
  - corsPolicy:
      allowOrigins: [{exact: ""}, {regex: "("}]
      allowMethods: [FETCH]
      allowHeaders: ["x y"]
      maxAge: 1.5s
      unmatchedPreflights: DROP
    route: [{destination: {host: web}}]
"#;
    let l = load(vs);
    let fields: Vec<String> = l
        .messages
        .iter()
        .filter(|m| m.level == Level::Error)
        .map(|m| m.field.clone())
        .collect();
    for want in [
        "spec.http[0].corsPolicy.allowOrigins[0]",
        "spec.http[0].corsPolicy.allowOrigins[1].regex",
        "spec.http[0].corsPolicy.allowMethods[0]",
        "spec.http[0].corsPolicy.allowHeaders[0]",
        "spec.http[0].corsPolicy.maxAge",
        "spec.http[0].corsPolicy.unmatchedPreflights",
    ] {
        assert!(fields.iter().any(|f| f == want), "{want} in {fields:?}");
    }
}

fn rt<'a>(j: &'a Value, rc: &str, vh: &str) -> &'a Vec<Value> {
    vhost(j, rc, vh)["routes"].as_array().unwrap()
}

#[test]
fn http_matches_as_istiod_translates_them() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - name: r
    match:
    - name: m
      headers: {x-z: {exact: z}, x-a: {}}
      withoutHeaders: {x-m: {exact: bad}, x-p: {}}
      queryParams: {q: {}, v: {prefix: "1"}}
      scheme: {exact: https}
      authority: {prefix: we}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /gw}, gateways: [mesh], sourceLabels: {app: nobody}}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /ns}, sourceNamespace: other}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /port}, port: 81}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /never}}]
    route: [{destination: {host: web}}]
"#;
    let (_, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    let r0 = &routes[0];
    assert_eq!(r0["name"], "r.m");
    let h: Vec<&str> = r0["match"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(h, ["x-a", "x-m", "x-p", "x-z", ":authority", ":scheme"]);
    let hs = &r0["match"]["headers"];
    assert_eq!(hs[0]["present_match"], true);
    assert_eq!(hs[1]["invert_match"], true);
    assert_eq!(hs[1]["treat_missing_header_as_empty"], true);
    assert_eq!(hs[2]["present_match"], true);
    assert!(hs[2].get("treat_missing_header_as_empty").is_none());
    assert_eq!(hs[4]["string_match"]["prefix"], "we");
    assert_eq!(hs[5]["string_match"]["exact"], "https");
    let q = &r0["match"]["query_parameters"];
    assert_eq!(q[0]["present_match"], true);
    assert_eq!(q[1]["string_match"]["prefix"], "1");
    // A match with gateways is decided by them alone (sourceLabels ignored, as istiod).
    assert_eq!(routes[1]["match"]["prefix"], "/gw");
    // sourceNamespace other, port 81: dropped on this proxy and port. The catch-all ends the
    // list: /never is not generated.
    assert_eq!(routes[2]["match"]["prefix"], "/");
    assert_eq!(routes.len(), 3);
    // From namespace `other` the sourceNamespace route is there.
    let (_, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("other"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert!(routes.iter().any(|r| r["match"]["prefix"] == "/ns"));
    // withoutHeaders through the route engine: a request without the header matches.
    let table = crate::route::RouteTable::from_proto(
        &crate::config::proto::decode_json_value(
            j["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "80")
                .unwrap()
                .clone(),
        )
        .unwrap(),
    )
    .unwrap();
    let parts = http::Request::get("/x?q&v=10")
        .header("host", "web.ns1")
        .header("x-z", "z")
        .header("x-a", "anything")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut view = crate::route::RequestView::from_parts(&parts);
    view.authority = "web.ns1";
    view.scheme = "https";
    match table.select(&view, 0) {
        crate::route::Selected::Route { route, .. } => assert_eq!(route.name, "r.m"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn destinations_headers_hashing_and_defaults_as_istiod() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash, namespace: ns1}
spec:
  host: web
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {consistentHash: {httpCookie: {name: sid, ttl: 10s, path: /}}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpQueryParameterName: user}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /one}}]
    headers: {request: {set: {x-r: "1", ":authority": route.example}}}
    route:
    - destination: {host: web, port: {number: 80}}
      headers: {request: {set: {x-d: "1", host: dest.example}, remove: [x-gone]}}
  - match: [{uri: {prefix: /split}}]
    route:
    - destination: {host: web, subset: v1}
      weight: 60
      headers: {request: {add: {host: v1.example}}}
    - destination: {host: web, port: {number: 80}}
      weight: 40
    - destination: {host: web, subset: v1, port: {number: 81}}
      weight: 0
  - match: [{uri: {prefix: /noport}}]
    route: [{destination: {host: web}}]
  - match: [{sourceLabels: {app: nobody}}]
    route: [{destination: {host: web}}]
"#;
    let yaml = format!("{SVC}{vs}").replace(
        "kind: DestinationRule\nmetadata: {name: web, namespace: ns1}",
        "kind: DestinationRule\nmetadata: {name: web, namespace: other}",
    );
    let (_, j) = tr(&yaml, &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    let one = &routes[0];
    assert_eq!(
        one["route"]["cluster"],
        "outbound|80||web.ns1.svc.cluster.local"
    );
    // Route headers first, then the destination's; authority from the route wins.
    let keys: Vec<&str> = one["request_headers_to_add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["header"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["x-r", "x-d"]);
    assert_eq!(
        one["request_headers_to_remove"],
        serde_json::json!(["x-gone"])
    );
    assert_eq!(one["route"]["host_rewrite_literal"], "route.example");
    // Port-level consistent hash (cookie); no previous-hosts retry predicate with hashing.
    assert_eq!(one["route"]["hash_policy"][0]["cookie"]["name"], "sid");
    assert_eq!(one["route"]["hash_policy"][0]["cookie"]["ttl"], "10s");
    assert!(one["route"]["retry_policy"]
        .get("retry_host_predicate")
        .is_none());
    let split = &routes[1]["route"];
    let cl = split["weighted_clusters"]["clusters"].as_array().unwrap();
    assert_eq!(cl.len(), 2, "weight 0 left out");
    assert_eq!(cl[0]["host_rewrite_literal"], "v1.example");
    assert!(
        cl[0].get("request_headers_to_add").is_none(),
        "host is never added as a header"
    );
    // Every destination's hash policy: query parameter (subset), cookie (port level).
    assert_eq!(split["hash_policy"][0]["query_parameter"]["name"], "user");
    assert_eq!(split["hash_policy"][1]["cookie"]["name"], "sid");
    assert!(split["retry_policy"].get("retry_host_predicate").is_some());
    // Port-level settings count only for a destination that names its port (istiod).
    let noport = &routes[2]["route"];
    assert!(noport.get("hash_policy").is_none());
    assert!(noport["retry_policy"].get("retry_host_predicate").is_some());
    // All routes dropped for this proxy: the service keeps its default route.
    let only = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {app: nobody}}]
    route: [{destination: {host: web, subset: v1}}]
"#;
    let (_, j) = tr(&format!("{SVC}{only}"), &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["name"], "default");
    let mut node = Node::sidecar("ns1");
    node.labels.insert("app".into(), "nobody".into());
    let (_, j) = tr(&format!("{SVC}{only}"), &node);
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert_eq!(
        routes[0]["route"]["cluster"],
        "outbound|80|v1|web.ns1.svc.cluster.local"
    );
}

#[test]
fn several_virtual_services_for_one_host() {
    let vss = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns1}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-second, namespace: ns1}
spec:
  hosts: [web]
  gateways: [gw, mesh]
  http:
  - route: [{destination: {host: web, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-first, namespace: ns1}
spec:
  hosts: [web]
  gateways: [gw, mesh]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"#;
    let cfg = load(&format!("{SVC}{vss}"));
    // Sidecars: the first by istiod's order (no creation times: by name) wins the host.
    let r = translate(&cfg, &Node::sidecar("ns1"));
    let j = r.to_json();
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["match"]["prefix"], "/a");
    assert!(r.messages.iter().any(|m| m.level == Level::Warning
        && m.resource.contains("b-second")
        && m.text.contains("ns1/a-first")));
    // Gateways merge both, catch-alls last in VirtualService order.
    let mut gw = Node {
        role: Role::Router,
        namespace: "ns1".into(),
        ..Default::default()
    };
    gw.labels.insert("istio".into(), "ingressgateway".into());
    let j = translate(&cfg, &gw).to_json();
    let routes = rt(&j, "http.80", "web.ns1.svc.cluster.local:80");
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0]["match"]["prefix"], "/a");
    assert_eq!(
        routes[1]["route"]["cluster"],
        "outbound|80||web.ns1.svc.cluster.local"
    );
    assert_eq!(
        routes[2]["route"]["cluster"],
        "outbound|80|v1|web.ns1.svc.cluster.local"
    );
    // An older creation time wins over the name.
    let dated = format!("{SVC}{vss}")
        .replace(
            "{name: b-second, namespace: ns1}",
            "{name: b-second, namespace: ns1, creationTimestamp: \"2020-01-01T00:00:00Z\"}",
        )
        .replace(
            "{name: a-first, namespace: ns1}",
            "{name: a-first, namespace: ns1, creationTimestamp: \"2021-01-01T00:00:00Z\"}",
        );
    let j = translate(&load(&dated), &Node::sidecar("ns1")).to_json();
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert_eq!(
        routes[0]["route"]["cluster"],
        "outbound|80|v1|web.ns1.svc.cluster.local"
    );
}

#[test]
fn tcp_routes_source_and_destination_subnets() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: net, namespace: ns1}
spec:
  hosts: [net.internal]
  addresses: [10.20.0.0/16]
  ports: [{number: 5000, name: tcp, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns1}
spec:
  hosts: [db.internal]
  addresses: [240.0.0.9]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.9.9.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-ro, namespace: ns1}
spec:
  hosts: [db-ro.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.9.9.10}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: net, namespace: ns1}
spec:
  hosts: [net.internal]
  tcp:
  - match: [{destinationSubnets: [10.20.1.0/24]}]
    route: [{destination: {host: db.internal, port: {number: 5432}}}]
  - route: [{destination: {host: net.internal}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: ns1}
spec:
  hosts: [db.internal]
  tcp:
  - match: [{sourceNamespace: ro}]
    route: [{destination: {host: db-ro.internal}}]
  - match: [{sourceLabels: {role: reader}}]
    route: [{destination: {host: db-ro.internal}}]
  - route: [{destination: {host: db.internal}}]
"#;
    let (r, _) = tr(yaml, &Node::sidecar("ns1"));
    let l = to_json(r.listener("0.0.0.0_5000").unwrap());
    let chains = l["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{chains:#?}");
    assert_eq!(
        chains[0]["filter_chain_match"]["prefix_ranges"][0]["address_prefix"],
        "10.20.1.0"
    );
    assert_eq!(
        chains[0]["filter_chain_match"]["prefix_ranges"][0]["prefix_len"],
        24
    );
    assert_eq!(
        chains[0]["filters"][0]["typed_config"]["cluster"],
        "outbound|5432||db.internal"
    );
    assert_eq!(
        chains[1]["filter_chain_match"]["prefix_ranges"][0]["prefix_len"],
        16
    );
    assert_eq!(
        chains[1]["filters"][0]["typed_config"]["cluster"],
        "outbound|5000||net.internal"
    );
    let cluster_of = |r: &Resources| {
        to_json(r.listener("240.0.0.9_5432").unwrap())["default_filter_chain"]["filters"][0]
            ["typed_config"]["cluster"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(cluster_of(&r), "outbound|5432||db.internal");
    let (r, _) = tr(yaml, &Node::sidecar("ro"));
    assert_eq!(cluster_of(&r), "outbound|5432||db-ro.internal");
    let mut reader = Node::sidecar("ns1");
    reader.labels.insert("role".into(), "reader".into());
    let (r, _) = tr(yaml, &reader);
    assert_eq!(cluster_of(&r), "outbound|5432||db-ro.internal");
    for l in &r.listeners {
        crate::model::listener::Listener::from_proto(l).unwrap();
    }
}

#[test]
fn headless_service_tcp_ports_get_per_pod_listeners() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: cass, namespace: ns1}
spec:
  clusterIP: None
  selector: {app: cass}
  ports:
  - {name: tcp-cql, port: 9042}
  - {name: http-admin, port: 8080}
---
apiVersion: v1
kind: Endpoints
metadata: {name: cass, namespace: ns1}
subsets:
- addresses: [{ip: 10.1.0.11}, {ip: 10.1.0.12}, {ip: 10.1.0.13}]
  ports: [{name: tcp-cql, port: 9042}, {name: http-admin, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cass, namespace: ns1}
spec:
  hosts: [cass]
  tcp:
  - route: [{destination: {host: cass, subset: v2}}]
"#;
    let node = Node {
        ip: Some("10.1.0.13".into()),
        ..Node::sidecar("ns1")
    };
    let (r, _) = tr(yaml, &node);
    for ip in ["10.1.0.11", "10.1.0.12"] {
        let l = to_json(r.listener(&format!("{ip}_9042")).unwrap());
        assert_eq!(l["address"]["socket_address"]["address"], ip);
        assert_eq!(l["bind_to_port"], false);
        assert_eq!(
            l["default_filter_chain"]["filters"][0]["typed_config"]["cluster"],
            "outbound|9042|v2|cass.ns1.svc.cluster.local"
        );
        crate::model::listener::Listener::from_proto(r.listener(&format!("{ip}_9042")).unwrap())
            .unwrap();
    }
    assert!(
        r.listener("10.1.0.13_9042").is_none(),
        "not for the proxy's own address"
    );
    assert!(r.listener("0.0.0.0_9042").is_none());
    assert!(
        r.listener("10.1.0.11_8080").is_none(),
        "HTTP ports stay on 0.0.0.0_PORT"
    );
    assert!(r.listener("0.0.0.0_8080").is_some());
    let c = to_json(
        r.cluster("outbound|9042||cass.ns1.svc.cluster.local")
            .unwrap(),
    );
    assert_eq!(c["type"], "ORIGINAL_DST");
}

#[test]
fn redirect_ports_as_istiod() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /derive}}]
    redirect: {derivePort: FROM_REQUEST_PORT, authority: b.example}
  - match: [{uri: {prefix: /default}}]
    redirect: {port: 80, uri: /x}
  - match: [{uri: {prefix: /tls}}]
    redirect: {port: 8443, scheme: https}
"#;
    let (_, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    // Listener port 80 over http: no explicit port in either case.
    assert!(routes[0]["redirect"].get("port_redirect").is_none());
    assert_eq!(routes[0]["redirect"]["host_redirect"], "b.example");
    assert!(routes[1]["redirect"].get("port_redirect").is_none());
    assert_eq!(routes[2]["redirect"]["port_redirect"], 8443);
    assert_eq!(routes[2]["redirect"]["scheme_redirect"], "https");
}

#[test]
fn most_specific_wildcard_virtual_service_wins() {
    let vss = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-broad, namespace: ns1}
spec:
  hosts: ["*.svc.cluster.local"]
  http: [{route: [{destination: {host: web, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-narrow, namespace: ns1}
spec:
  hosts: ["*.ns1.svc.cluster.local"]
  http: [{route: [{destination: {host: web}}]}]
"#;
    let (_, j) = tr(&format!("{SVC}{vss}"), &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    assert_eq!(
        routes[0]["route"]["cluster"],
        "outbound|80||web.ns1.svc.cluster.local"
    );
}

#[test]
fn virtual_service_hosts_that_are_not_services() {
    let extra = r#"
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: ns1}
spec:
  clusterIP: 10.0.0.8
  ports: [{name: http, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: ns1}
spec:
  hosts: [ext.example.com, "*.wild.example"]
  http: [{route: [{destination: {host: api, port: {number: 9090}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: ns1}
spec:
  hosts: [api, alias.example.com]
  http: [{route: [{destination: {host: api}}]}]
"#;
    let (_, j) = tr(&format!("{SVC}{extra}"), &Node::sidecar("ns1"));
    // Hosts of a VirtualService that names no service: port 80 (istiod), whatever the
    // destination's port.
    assert_eq!(
        vhost(&j, "80", "ext.example.com:80")["routes"][0]["route"]["cluster"],
        "outbound|9090||api.ns1.svc.cluster.local"
    );
    vhost(&j, "80", "*.wild.example:80");
    let rc9090 = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "9090")
        .unwrap();
    let names: Vec<&str> = rc9090["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"ext.example.com:9090"), "{names:?}");
    // Next to a service: on that service's HTTP ports.
    assert!(names.contains(&"alias.example.com:9090"), "{names:?}");
    let rc80 = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "80")
        .unwrap();
    assert!(!rc80.to_string().contains("alias.example.com"));
}

#[test]
fn mesh_config_access_logs_on_every_listener() {
    let mesh = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/null
    defaultConfig: {discoveryAddress: istiod.istio-system.svc:15012}
"#;
    let yaml = format!("{SVC}---{mesh}");
    let (r, j) = tr(&yaml, &Node::sidecar("ns1"));
    assert!(
        r.messages.iter().all(|m| m.level != validate::Level::Error),
        "{:?}",
        r.messages
    );
    // Every HTTP connection manager and tcp_proxy logs, in Istio's text format.
    let text = j["listeners"].to_string();
    let logs = text.matches("envoy.access_loggers.file").count();
    let filters =
        text.matches("HttpConnectionManager\"").count() + text.matches("TcpProxy\"").count();
    assert!(
        logs > 0 && logs == filters,
        "{logs} logs for {filters} filters"
    );
    assert!(text.contains("/dev/null"));
    assert!(text.contains("%UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%"));
    // Everything it generates is accepted by the data path.
    for l in &r.listeners {
        crate::model::listener::Listener::from_proto(l).unwrap();
    }

    // JSON encoding, and the CLI's file wins.
    let mesh_json = mesh.replace(
        "accessLogFile: /dev/null",
        "accessLogFile: /dev/null\n    accessLogEncoding: JSON",
    );
    let node = Node {
        access_log_file: Some("/dev/stdout".into()),
        ..Node::sidecar("ns1")
    };
    let (_, j) = tr(&format!("{SVC}---{mesh_json}"), &node);
    let text = j["listeners"].to_string();
    assert!(text.contains("/dev/stdout") && !text.contains("/dev/null"));
    assert!(text.contains("json_format") && text.contains("upstream_cluster"));

    // No setting, no access logs.
    let (_, j) = tr(SVC, &Node::sidecar("ns1"));
    assert!(!j["listeners"].to_string().contains("access_log"));
}

#[test]
fn http10_node_metadata_makes_every_connection_manager_accept_http10() {
    let node = Node {
        http10: true,
        ..Node::sidecar("ns1")
    };
    let (r, j) = tr(SVC, &node);
    let text = j["listeners"].to_string();
    let hcms = text.matches("HttpConnectionManager").count();
    assert!(hcms > 0, "{text}");
    assert_eq!(
        text.matches("\"accept_http_10\":true").count(),
        hcms,
        "{text}"
    );
    for l in &r.listeners {
        crate::model::listener::Listener::from_proto(l).unwrap();
    }
    let (_, j) = tr(SVC, &Node::sidecar("ns1"));
    assert!(!j["listeners"].to_string().contains("accept_http_10"));
}

/// istiod's retry conversion: `backoff` is the base interval, an explicit
/// `retryIgnorePreviousHosts` decides the previous-hosts predicate (even with hashing).
#[test]
fn retry_backoff_and_previous_hosts_as_istiod() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /a}}]
    retries: {attempts: 4, backoff: 40ms, retryIgnorePreviousHosts: false}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /b}}]
    retries: {attempts: 1, retryIgnorePreviousHosts: true}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"#;
    let (r, j) = tr(&format!("{SVC}{vs}"), &Node::sidecar("ns1"));
    let routes = rt(&j, "80", "web.ns1.svc.cluster.local:80");
    let a = &routes[0]["route"]["retry_policy"];
    assert_eq!(a["num_retries"], 4);
    assert_eq!(a["retry_back_off"]["base_interval"], "0.040s");
    assert!(a.get("retry_host_predicate").is_none());
    let b = &routes[1]["route"]["retry_policy"];
    assert!(b.get("retry_back_off").is_none());
    assert_eq!(
        b["retry_host_predicate"][0]["name"],
        "envoy.retry_host_predicates.previous_hosts"
    );
    // The data path reads them back.
    for rc in &r.routes {
        crate::route::RouteTable::from_proto(rc).unwrap();
    }
}

/// A DestinationRule with a `workloadSelector` applies to the workloads it selects in its own
/// namespace, before the namespace's rule without a selector; everyone else gets that one.
#[test]
fn destination_rules_with_workload_selectors_apply_to_the_selected_workloads() {
    let drs = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: ns1}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: canary-clients, namespace: ns1}
spec:
  host: web
  workloadSelector: {matchLabels: {app: canary}}
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: elsewhere, namespace: ns2}
spec:
  host: web.ns1.svc.cluster.local
  workloadSelector: {matchLabels: {app: canary}}
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"#;
    let lb = |ns: &str, labels: &[(&str, &str)]| {
        let node = labelled_sidecar(ns, labels);
        // SVC's own DestinationRule moves away, so only these three apply.
        let yaml = format!("{SVC}{drs}").replace(
            "kind: DestinationRule\nmetadata: {name: web, namespace: ns1}",
            "kind: DestinationRule\nmetadata: {name: web, namespace: other}",
        );
        let (r, _) = tr(&yaml, &node);
        let c = to_json(r.cluster("outbound|80||web.ns1.svc.cluster.local").unwrap());
        let subset = r
            .cluster("outbound|80|v1|web.ns1.svc.cluster.local")
            .is_some();
        (
            c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN").to_string(),
            subset,
        )
    };
    assert_eq!(
        lb("ns1", &[("app", "canary")]),
        ("LEAST_REQUEST".into(), true)
    );
    assert_eq!(lb("ns1", &[("app", "other")]), ("RANDOM".into(), false));
    assert_eq!(lb("ns1", &[]), ("RANDOM".into(), false));
    // In ns2 the selector rule is ns2's own; ns1's rules (exported everywhere) lose to it.
    assert_eq!(
        lb("ns2", &[("app", "canary")]),
        ("ROUND_ROBIN".into(), false)
    );
    assert_eq!(lb("ns2", &[]), ("RANDOM".into(), false));
}

/// `outboundTrafficPolicy.mode: REGISTRY_ONLY` in the `istio` ConfigMap: istiod's catch-alls
/// send unknown traffic to BlackHoleCluster and unknown HTTP hosts to a 502 `block_all`.
#[test]
fn registry_only_blocks_what_allow_any_passes_through() {
    let se = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns1}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;
    let mesh = |mode: &str| {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n    outboundTrafficPolicy: {{mode: {mode}}}\n"
        )
    };
    for (mode, cluster, vhost) in [
        ("ALLOW_ANY", "PassthroughCluster", "allow_any"),
        ("REGISTRY_ONLY", "BlackHoleCluster", "block_all"),
    ] {
        let (r, j) = tr(&format!("{SVC}{se}{}", mesh(mode)), &Node::sidecar("ns1"));
        let vo = to_json(r.listener("virtualOutbound").unwrap());
        assert_eq!(
            vo["default_filter_chain"]["filters"][0]["typed_config"]["cluster"], cluster,
            "{mode}"
        );
        let tls = to_json(r.listener("0.0.0.0_443").unwrap());
        assert_eq!(
            tls["default_filter_chain"]["filters"][0]["typed_config"]["cluster"], cluster,
            "{mode}: SNI that names no host"
        );
        let last = rt(&j, "80", vhost);
        assert_eq!(last[0]["name"], vhost);
        if mode == "REGISTRY_ONLY" {
            assert_eq!(last[0]["direct_response"]["status"], 502);
        }
        for rc in &r.routes {
            crate::route::RouteTable::from_proto(rc).unwrap();
        }
    }
}

/// `Sidecar` scoping: the proxy's namespace's Sidecar (one whose selector matches first), else
/// istio-system's, limits the services it sees to `egress[].hosts`; its
/// `outboundTrafficPolicy` overrides the mesh's.
#[test]
fn sidecar_resources_scope_what_a_proxy_sees() {
    let extra = r#"
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns2}
spec:
  clusterIP: 10.0.0.9
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: secret, namespace: ns2}
spec:
  clusterIP: 10.0.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns1}
spec:
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: canary, namespace: ns1}
spec:
  workloadSelector: {labels: {app: canary}}
  egress: [{hosts: ["*/*", "~ns2/secret.ns2.svc.cluster.local"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: ["ns2/*"]}]
"#;
    let sees = |ns: &str, labels: &[(&str, &str)]| {
        let node = labelled_sidecar(ns, labels);
        let (r, _) = tr(&format!("{SVC}{extra}"), &node);
        let mut seen: Vec<&str> = ["web.ns1", "db.ns2", "secret.ns2"]
            .into_iter()
            .filter(|h| {
                r.cluster(&format!("outbound|80||{h}.svc.cluster.local"))
                    .is_some()
            })
            .collect();
        seen.sort();
        let vo = to_json(r.listener("virtualOutbound").unwrap());
        let catch_all = vo["default_filter_chain"]["filters"][0]["typed_config"]["cluster"]
            .as_str()
            .unwrap()
            .to_string();
        (seen, catch_all)
    };
    let pass = "PassthroughCluster".to_string();
    assert_eq!(sees("ns1", &[]), (vec!["web.ns1"], pass.clone()));
    assert_eq!(
        sees("ns1", &[("app", "canary")]),
        (vec!["db.ns2", "web.ns1"], "BlackHoleCluster".to_string())
    );
    // ns2 has no Sidecar: istio-system's applies.
    assert_eq!(
        sees("ns2", &[]),
        (vec!["db.ns2", "secret.ns2"], pass.clone())
    );
    // Gateways are not scoped by Sidecars.
    let gw = Node {
        role: Role::Router,
        namespace: "ns1".into(),
        ..Default::default()
    };
    let (r, _) = tr(&format!("{SVC}{extra}"), &gw);
    assert!(r
        .cluster("outbound|80||secret.ns2.svc.cluster.local")
        .is_some());
}
