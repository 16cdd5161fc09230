//! Each rule against a resource that breaks only it (rejected, with the field named) and the
//! nearby forms istiod accepts (kept, with no error).

use crate::istio::load::{load_str, Loaded};
use crate::istio::Level;

fn load(kind: &str, name: &str, spec: &str) -> Loaded {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: ns1}}\nspec:\n{spec}"
    );
    let mut l = Loaded::default();
    load_str("v.yaml", &yaml, &mut l);
    l
}

/// (kind, spec, the field the error names). Each spec is valid but for one thing.
const REJECTED: &[(&str, &str, &str)] = &[
    // VirtualService: hosts and gateways
    ("VirtualService", "  hosts: ['*']\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.hosts[0]"),
    ("VirtualService", "  hosts: [web, '*.ns1.svc.cluster.local', web.ns1.svc.cluster.local]\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.hosts[1]"),
    ("VirtualService", "  hosts: ['web.*.com']\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.hosts[0]"),
    ("VirtualService", "  hosts: [a.example.123]\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.hosts[0]"),
    ("VirtualService", "  hosts: [web]\n", "spec"),
    ("VirtualService", "  hosts: [web]\n  gateways: ['istio-system/']\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.gateways[0]"),
    ("VirtualService", "  gateways: [gw]\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.gateways"),
    ("VirtualService", "  hosts: [web]\n  exportTo: ['*', ns2]\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.exportTo"),
    ("VirtualService", "  hosts: [web]\n  exportTo: ['~']\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.exportTo[0]"),
    // HTTP routes
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{headers: {'bad name': {exact: x}}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].headers.bad name"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{headers: {x-a: {prefix: ''}}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].headers.x-a.prefix"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{uri: {regex: ''}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].uri.regex"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{uri: {regex: '(a'}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].uri.regex"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{headers: {'@request.auth.claims.group': {exact: a}}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].headers.@request.auth.claims.group"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{port: 70000}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].port"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{sourceLabels: {'a b': x}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].sourceLabels"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{sourceNamespace: 'a.b'}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].match[0].sourceNamespace"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: '*'}}]\n", "spec.http[0].route[0].destination.host"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web, subset: v1.0}}]\n", "spec.http[0].route[0].destination.subset"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web, port: {}}}]\n", "spec.http[0].route[0].destination.port.number"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, weight: -1}, {destination: {host: web2}, weight: 101}]\n", "spec.http[0].route"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, weight: 0}, {destination: {host: web2}, weight: 0}]\n", "spec.http[0].route"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - redirect: {uri: /a}\n    rewrite: {uri: /b}\n", "spec.http[0]"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - directResponse: {status: 503}\n    fault: {abort: {httpStatus: 500}}\n", "spec.http[0]"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - redirect: {redirectCode: 301}\n", "spec.http[0].redirect"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - redirect: {uri: /a, redirectCode: 200}\n", "spec.http[0].redirect.redirectCode"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - redirect: {uri: /a, scheme: ftp}\n", "spec.http[0].redirect.scheme"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{uri: {exact: /a}}]\n    redirect: {prefixRewrite: /b}\n", "spec.http[0].redirect.prefixRewrite"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - rewrite: {}\n    route: [{destination: {host: web}}]\n", "spec.http[0].rewrite"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - timeout: 0s\n    route: [{destination: {host: web}}]\n", "spec.http[0].timeout"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - timeout: 1500us\n    route: [{destination: {host: web}}]\n", "spec.http[0].timeout"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - retries: {attempts: 0, perTryTimeout: 1s}\n    route: [{destination: {host: web}}]\n", "spec.http[0].retries"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - retries: {attempts: 2, retryOn: '5xx, reset'}\n    route: [{destination: {host: web}}]\n", "spec.http[0].retries.retryOn"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - retries: {attempts: 2, backoff: 0.5ms}\n    route: [{destination: {host: web}}]\n", "spec.http[0].retries.backoff"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - fault: {}\n    route: [{destination: {host: web}}]\n", "spec.http[0].fault"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - fault: {abort: {httpStatus: 500, percentage: {value: 101}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].fault.abort.percentage"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - fault: {abort: {grpcStatus: NOPE}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].fault.abort.grpcStatus"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - fault: {delay: {exponentialDelay: 1s}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].fault.delay.exponentialDelay"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - mirror: {host: m}\n    mirrors: [{destination: {host: m2}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0]"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - mirrors: [{destination: {host: m}, percentage: {value: 120}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].mirrors[0].percentage"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - directResponse: {status: 700}\n", "spec.http[0].directResponse.status"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - headers: {request: {set: {':path': /x}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].headers.request.set.:path"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - headers: {response: {set: {host: x}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].headers.response.set.host"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, headers: {request: {remove: [Host]}}}]\n", "spec.http[0].route[0].headers.request.remove[0]"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - headers: {request: {add: {x-a: 'abc%123'}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].headers.request.add.x-a"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - rewrite: {authority: a.example}\n    headers: {request: {set: {host: b.example}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0]"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - corsPolicy: {allowMethods: [get]}\n    route: [{destination: {host: web}}]\n", "spec.http[0].corsPolicy.allowMethods[0]"),
    // TLS and TCP routes
    ("VirtualService", "  hosts: ['*.example.com']\n  tls:\n  - match: [{sniHosts: [a.other.com]}]\n    route: [{destination: {host: web}}]\n", "spec.tls[0].match[0].sniHosts[0]"),
    ("VirtualService", "  hosts: [a.example.com]\n  tls:\n  - route: [{destination: {host: web}}]\n", "spec.tls[0].match"),
    ("VirtualService", "  hosts: [web]\n  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/40]}]\n    route: [{destination: {host: web}}]\n", "spec.tcp[0].match[0].destinationSubnets[0]"),
    ("VirtualService", "  hosts: [web]\n  tcp:\n  - match: [{port: 80}]\n", "spec.tcp[0].route"),
    // DestinationRule
    ("DestinationRule", "  host: ''\n", "spec.host"),
    ("DestinationRule", "  host: 10.0.0.1\n", "spec.host"),
    ("DestinationRule", "  host: web\n  subsets: [{name: v1.0}]\n", "spec.subsets[0].name"),
    ("DestinationRule", "  host: web\n  subsets: [{name: v1, labels: {version: 'v 1'}}]\n", "spec.subsets[0].labels"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {}\n", "spec.trafficPolicy"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {connectionPool: {}}\n", "spec.trafficPolicy.connectionPool"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}\n", "spec.trafficPolicy.connectionPool.http"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}\n", "spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}\n", "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {outlierDetection: {interval: 0s}}\n", "spec.trafficPolicy.outlierDetection.interval"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 1000}}}}\n", "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us/*', to: {'us/a/*': 60, 'us/b/*': 30}}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {tls: {mode: MUTUAL}}\n", "spec.trafficPolicy.tls.clientCertificate"),
    ("DestinationRule", "  host: web\n  trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}\n", "spec.trafficPolicy.portLevelSettings[0].port"),
    ("DestinationRule", "  host: web\n  workloadSelector: {matchLabels: {app: web}}\n  exportTo: ['*']\n", "spec.exportTo"),
    // ServiceEntry
    ("ServiceEntry", "  hosts: ['*']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n", "spec.hosts[0]"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  addresses: [10.0.0.0/8]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n", "spec.addresses[0]"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 80, name: web, protocol: HTTP}]\n", "spec.ports[1].number"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: http, protocol: HTTP}]\n", "spec.ports[1].name"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: SPDY}]\n", "spec.ports[0].protocol"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.1}]\n", "spec.endpoints"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: a.example.com}]\n", "spec.endpoints[0].address"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {grpc: 9000}}]\n", "spec.endpoints[0].ports.grpc"),
    ("ServiceEntry", "  hosts: ['*.example.com']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n", "spec.hosts[0]"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.example.com}, {address: b.example.com}]\n", "spec.endpoints"),
    ("ServiceEntry", "  hosts: [a.example.com, b.example.com]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: DNS\n", "spec.hosts"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: a}}\n  endpoints: [{address: 10.0.0.1}]\n", "spec.workloadSelector"),
    // Sidecar
    ("Sidecar", "  egress: [{hosts: [reviews]}]\n", "spec.egress[0].hosts[0]"),
    ("Sidecar", "  egress: [{hosts: ['a.b/*']}]\n", "spec.egress[0].hosts[0]"),
    ("Sidecar", "  egress: [{hosts: ['./*']}, {hosts: ['*/*']}]\n", "spec.egress"),
    ("Sidecar", "  {}\n", "spec"),
    ("Sidecar", "  outboundTrafficPolicy: {mode: DENY}\n", "spec.outboundTrafficPolicy.mode"),
    // Gateway
    ("Gateway", "  servers: []\n", "spec.servers"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [web]\n", "spec.servers[0].hosts[0]"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*foo.example.com']\n", "spec.servers[0].hosts[0]"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['a.b/*.example.com']\n", "spec.servers[0].hosts[0]"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 81, name: http, protocol: HTTP}\n    hosts: ['*']\n", "spec.servers[1].port.name"),
    ("Gateway", "  servers:\n  - port: {number: 80, protocol: HTTP}\n    hosts: ['*']\n", "spec.servers[0].port.name"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: QUIC}\n    hosts: ['*']\n", "spec.servers[0].port.protocol"),
    ("Gateway", "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n", "spec.servers[0].tls"),
    ("Gateway", "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE}\n", "spec.servers[0].tls.serverCertificate"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: c}\n", "spec.servers[0].tls"),
    ("Gateway", "  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: ISTIO_MUTUAL, credentialName: c}\n", "spec.servers[0].tls.credentialName"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    bind: not-an-ip\n", "spec.servers[0].bind"),
];

/// Forms istiod accepts that are close to the rejected ones.
const ACCEPTED: &[(&str, &str)] = &[
    ("VirtualService", "  hosts: ['*']\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: [web, 10.0.0.1, '*.example.com']\n  http:\n  - route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: [web]\n  gateways: [mesh, gw.istio-system.svc.cluster.local]\n  http:\n  - route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  http:\n  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{uri: {prefix: ''}, headers: {X-Mixed-Case: {exact: ''}}, withoutHeaders: {x-b: {regex: '*'}}}]\n    route: [{destination: {host: web}, weight: 30}, {destination: {host: web2}, weight: 170}]\n"),
    ("VirtualService", "  hosts: [web]\n  gateways: [gw]\n  http:\n  - match: [{headers: {'@request.auth.claims.group': {exact: a}}}]\n    route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{uri: {prefix: /old}}]\n    redirect: {prefixRewrite: /new, redirectCode: 308}\n"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - redirect: {derivePort: FROM_REQUEST_PORT}\n"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - timeout: 1ms\n    retries: {attempts: 3, perTryTimeout: 1.5s, retryOn: '5xx,503,reset', backoff: 50ms, retryIgnorePreviousHosts: false}\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.5}}, delay: {fixedDelay: 7s}}\n    headers: {request: {set: {':authority': a.example, x-f: '%DOWNSTREAM_REMOTE_ADDRESS%'}, remove: [x-b]}}\n    route: [{destination: {host: web.ns1.svc.cluster.local, subset: V1, port: {number: 8080}}}]\n"),
    ("VirtualService", "  hosts: [web]\n  http:\n  - retries: {attempts: 0}\n    mirror: {host: m}\n    mirrorPercentage: {value: 0.1}\n    corsPolicy: {allowOrigins: [{exact: 'https://a'}], allowMethods: [GET, '*'], allowHeaders: [X-Custom_Header], maxAge: 24h}\n    route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: ['*.example.com']\n  gateways: [gw]\n  tls:\n  - match: [{sniHosts: [a.example.com, '*.b.example.com'], port: 443}]\n    route: [{destination: {host: web}}]\n"),
    ("VirtualService", "  hosts: [web]\n  exportTo: ['.', ns2]\n  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/8, 10.1.1.1]}]\n    route: [{destination: {host: web}}]\n"),
    ("DestinationRule", "  host: '*.example.com'\n  subsets: [{name: v1, labels: {version: v1, 'app.kubernetes.io/name': web}}]\n  trafficPolicy:\n    connectionPool: {tcp: {idleTimeout: 0s, connectTimeout: 250ms}, http: {h2UpgradePolicy: UPGRADE}}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}\n    loadBalancer: {consistentHash: {maglev: {tableSize: 65537}}, localityLbSetting: {distribute: [{from: 'us/*', to: {'us/a/*': 60, 'us/b/*': 40}}]}}\n    portLevelSettings: [{port: {number: 80}, tls: {mode: ISTIO_MUTUAL}}]\n"),
    ("DestinationRule", "  host: web\n  workloadSelector: {matchLabels: {app: web}}\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: c}}\n"),
    ("ServiceEntry", "  hosts: [a.example.com]\n"),
    ("ServiceEntry", "  hosts: [a.example.com, b.example.com]\n  addresses: [10.0.0.0/8]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {http: 8080}, labels: {v: '1'}}]\n"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 'unix:///var/run/a.sock'}]\n"),
    ("ServiceEntry", "  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n  endpoints: [{address: lb.example.com}, {address: 10.0.0.1}]\n  exportTo: ['~']\n"),
    ("Sidecar", "  workloadSelector: {labels: {app: web}}\n  egress:\n  - hosts: ['./*', 'istio-system/*', '*/api.example.com', '~ns2/secret.ns2.svc.cluster.local']\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"),
    ("Gateway", "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['ns1/*.example.com', './a.example.com', '*/b.example.com', '*']\n    tls: {httpsRedirect: true}\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: a-cert}\n  - port: {number: 15443, name: tls, protocol: TLS}\n    hosts: ['*.local']\n    tls: {mode: AUTO_PASSTHROUGH}\n"),
];

#[test]
fn each_rule_rejects_its_resource_and_names_the_field() {
    let mut failures = Vec::new();
    for (i, (kind, spec, field)) in REJECTED.iter().enumerate() {
        let l = load(kind, "r", spec);
        let errors: Vec<_> = l
            .messages
            .iter()
            .filter(|m| m.level == Level::Error)
            .collect();
        if !l.objects.is_empty() {
            failures.push(format!("#{i} {kind} was kept: {errors:?}\n{spec}"));
        } else if !errors.iter().any(|m| m.field == *field) {
            failures.push(format!(
                "#{i} {kind}: no error at {field}: {errors:#?}\n{spec}"
            ));
        } else if !errors
            .iter()
            .all(|m| m.to_string().contains(&format!("{kind} ns1/r")))
        {
            failures.push(format!("#{i} {kind}: message does not name the resource"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn forms_istiod_accepts_are_kept() {
    let mut failures = Vec::new();
    for (i, (kind, spec)) in ACCEPTED.iter().enumerate() {
        let l = load(kind, "ok", spec);
        let errors: Vec<String> = l
            .messages
            .iter()
            .filter(|m| m.level == Level::Error)
            .map(|m| m.to_string())
            .collect();
        if l.objects.len() != 1 || !errors.is_empty() {
            failures.push(format!("#{i} {kind}: {errors:#?}\n{spec}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn gateway_names_are_dns_labels_but_other_kinds_are_not_checked() {
    let gw = "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n";
    let l = load("Gateway", "my.gateway", gw);
    assert!(l.objects.is_empty());
    assert!(l.messages.iter().any(|m| m.field == "metadata.name"));
    assert_eq!(load("Gateway", "my-gateway", gw).objects.len(), 1);
    assert_eq!(
        load(
            "VirtualService",
            "web.v1",
            "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n"
        )
        .objects
        .len(),
        1
    );
}

#[test]
fn names_kubernetes_refuses_are_refused() {
    let vs = "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n";
    for name in ["Web", "web_1", "'^('", "-web"] {
        let l = load("VirtualService", name, vs);
        assert!(l.objects.is_empty(), "{name}");
        assert!(
            l.messages.iter().any(|m| m.field == "metadata.name"),
            "{name}"
        );
    }
    let mut l = Loaded::default();
    load_str(
        "v.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: 9web, namespace: ns1}\nspec: {ports: [{port: 80}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: NS1}\nspec: {host: web}\n",
        &mut l,
    );
    assert!(l.objects.is_empty(), "{:#?}", l.messages);
    assert!(l.messages.iter().any(|m| m.field == "metadata.namespace"));
}

#[test]
fn warnings_keep_the_resource() {
    for (kind, spec, field) in [
        ("VirtualService", "  hosts: [web]\n  gateways: [gw.istio-system]\n  http:\n  - route: [{destination: {host: web}}]\n", "spec.gateways[0]"),
        ("VirtualService", "  hosts: [web]\n  http:\n  - mirror: {host: m}\n    mirrorPercent: 5\n    route: [{destination: {host: web}}]\n", "spec.http[0].mirrorPercent"),
        ("VirtualService", "  hosts: [web]\n  http:\n  - fault: {abort: {percentage: {value: 5}}}\n    route: [{destination: {host: web}}]\n", "spec.http[0].fault.abort"),
        ("DestinationRule", "  host: web\n  trafficPolicy: {outlierDetection: {consecutiveErrors: 5}}\n", "spec.trafficPolicy.outlierDetection.consecutiveErrors"),
        ("DestinationRule", "  host: web\n  trafficPolicy: {retryBudget: {percent: 20}}\n", "spec.trafficPolicy.retryBudget"),
        ("ServiceEntry", "  hosts: ['*foo.example.com']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n", "spec.hosts[0]"),
        ("Gateway", "  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*.example.com']\n    tls: {mode: PASSTHROUGH, credentialName: c}\n", "spec.servers[0].tls"),
        ("VirtualService", "  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: web}}]\n", "spec.http[1]"),
        ("VirtualService", "  hosts: [web]\n  http:\n  - match: [{name: one, uri: {prefix: /a}}]\n    route: [{destination: {host: web}}]\n  - match: [{uri: {exact: /b}}, {name: two, uri: {prefix: /a}}]\n    route: [{destination: {host: web}}]\n", "spec.http[1].match[1]"),
        ("VirtualService", "  hosts: [web]\n  tcp:\n  - route: [{destination: {host: web}}]\n  - match: [{port: 80}]\n    route: [{destination: {host: web}}]\n", "spec.tcp[1]"),
    ] {
        let l = load(kind, "w", spec);
        assert_eq!(l.objects.len(), 1, "{kind}: {:#?}", l.messages);
        assert!(
            l.messages.iter().any(|m| m.level == Level::Warning && m.field == field),
            "{kind} {field}: {:#?}",
            l.messages
        );
    }
}
