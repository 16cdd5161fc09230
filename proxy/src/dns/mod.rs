//! The mesh DNS proxy (istio-agent's, on 15053): with `sluice-iptables --redirect-dns` the
//! application's DNS to its nameserver (UDP and TCP, port 53) lands here. A/AAAA questions for
//! mesh hosts are answered locally; everything else is forwarded to the resolvers from the
//! pod's resolv.conf: UDP first, again over TCP when the answer comes back truncated; TCP
//! questions go over TCP. The wire format is hickory-proto's.
//!
//! What is answered locally, as istio-agent's DNS proxy (`pkg/dns/client`) does:
//! - every name in the [`Table`]: A/AAAA records, or NOERROR with no data when the name is
//!   known but has no address of the asked family (never NXDOMAIN: clients asking A and AAAA
//!   in parallel would treat the whole name as missing);
//! - `*.suffix` wildcard hosts, answered under the asked name;
//! - search-suffix expansions a stub resolver with `ndots:5` tries first: `<known>.<search>`
//!   (`reviews.default.svc.cluster.local.default.svc.cluster.local`,
//!   `api.example.com.default.svc.cluster.local`) is answered with a CNAME to the known name
//!   followed by its addresses, so one lookup costs one round trip. istio-agent does this for
//!   the first search domain; Sluice for every search domain;
//! - CNAME hosts (Kubernetes `ExternalName` services): the CNAME, then the target's addresses
//!   from the table or, for a name outside the mesh, from the upstream resolvers (as CoreDNS
//!   answers ExternalName services);
//! - names under the cluster domain that Kubernetes DNS can never have (more than
//!   `hostname.service.namespace` in front of `svc.<domain>`, i.e. the search expansions of an
//!   unknown name that is already qualified, such as
//!   `ratings.default.svc.cluster.local.default.svc.cluster.local` or
//!   `www.example.com.default.svc.cluster.local`): NXDOMAIN, without asking upstream. Only set
//!   when the table knows its cluster domain ([`Table::set_cluster_domain`]).
//!
//! Hosts come from a hosts-file (`ip name…` lines) and/or the Istio registry ([`mesh`]), which
//! also refreshes the table of a running proxy ([`SharedTable`]) when the config changes.

pub mod mesh;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, Metadata, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::stats::registry;

/// TTL of local answers, as istio-agent's (30s).
const TTL: u32 = 30;
/// How long one upstream exchange may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest CNAME chain followed inside the table.
const MAX_CHAIN: usize = 8;

/// Why the DNS proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Hosts {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("cannot bind DNS proxy on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("Istio config: {0}")]
    Istio(#[from] crate::istio::LoadError),
}

/// What one name in the table is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Addrs(Vec<IpAddr>),
    /// A CNAME to another name (normalized).
    Alias(String),
}

/// Mesh hosts, wildcard hosts, CNAMEs and the pod's search domains.
#[derive(Debug, Clone, Default)]
pub struct Table {
    hosts: HashMap<String, Target>,
    /// `*.suffix` hosts by `suffix`.
    wildcards: HashMap<String, Vec<IpAddr>>,
    search: Vec<String>,
    /// The cluster domain (`cluster.local`) for structural NXDOMAIN answers.
    cluster_domain: Option<String>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// One step of a lookup.
enum Step<'a> {
    Addrs(&'a [IpAddr]),
    /// CNAME to this name (a table alias, or a search expansion of a known name).
    Alias(String),
}

/// A name resolved inside the table: the CNAMEs followed (`owner → target`), then either the
/// addresses of the last name or, when the last target is not in the table, that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub chain: Vec<(String, String)>,
    pub addrs: Option<&'a [IpAddr]>,
    /// The last name of the chain (the name `addrs` belong to, or the one to ask upstream).
    pub last: String,
}

impl Table {
    pub fn new(search: Vec<String>) -> Table {
        Table {
            search: search.iter().map(|s| norm(s)).collect(),
            ..Table::default()
        }
    }

    /// The search domains expansions are answered for.
    pub fn search(&self) -> &[String] {
        &self.search
    }

    /// Answers NXDOMAIN for names under `svc.<domain>` that Kubernetes DNS cannot have.
    pub fn set_cluster_domain(&mut self, domain: &str) {
        self.cluster_domain = Some(norm(domain));
    }

    /// Number of names (exact and wildcard).
    pub fn len(&self) -> usize {
        self.hosts.len() + self.wildcards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an address for `name` (`*.suffix` adds a wildcard host). Addresses replace a
    /// CNAME the name had.
    pub fn add(&mut self, name: &str, ip: IpAddr) {
        let n = norm(name);
        let e = if let Some(suffix) = n.strip_prefix("*.") {
            self.wildcards.entry(suffix.to_string()).or_default()
        } else {
            let t = self
                .hosts
                .entry(n)
                .or_insert_with(|| Target::Addrs(Vec::new()));
            if let Target::Alias(a) = t {
                tracing::debug!(alias = %a, "DNS table: addresses replace a CNAME");
                *t = Target::Addrs(Vec::new());
            }
            let Target::Addrs(v) = t else { unreachable!() };
            v
        };
        if !e.contains(&ip) {
            e.push(ip);
        }
    }

    /// Makes `name` a CNAME to `target` (unless it already has addresses).
    pub fn add_cname(&mut self, name: &str, target: &str) {
        let n = norm(name);
        if matches!(self.hosts.get(&n), Some(Target::Addrs(v)) if !v.is_empty()) {
            return;
        }
        self.hosts.insert(n, Target::Alias(norm(target)));
    }

    /// Whether `name` has an entry of its own (not counting expansions and wildcards).
    pub fn contains(&self, name: &str) -> bool {
        self.hosts.contains_key(&norm(name))
    }

    /// Adds hosts-file lines (`ip name [alias…]`, `#` comments).
    pub fn add_hosts_file(&mut self, text: &str, path: &str) -> Result<(), DnsError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(ip) = words.next() else { continue };
            let ip: IpAddr = ip.parse().map_err(|_| DnsError::Hosts {
                path: path.into(),
                line: i + 1,
                reason: format!("{ip:?} is not an IP address"),
            })?;
            let mut any = false;
            for name in words {
                self.add(name, ip);
                any = true;
            }
            if !any {
                return Err(DnsError::Hosts {
                    path: path.into(),
                    line: i + 1,
                    reason: "no host name".into(),
                });
            }
        }
        Ok(())
    }

    /// The entry of `n` itself or of a wildcard covering it.
    fn direct(&self, n: &str) -> Option<Step<'_>> {
        match self.hosts.get(n) {
            Some(Target::Addrs(v)) => return Some(Step::Addrs(v)),
            Some(Target::Alias(a)) => return Some(Step::Alias(a.clone())),
            None => {}
        }
        let mut rest = n;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(v) = self.wildcards.get(suffix) {
                return Some(Step::Addrs(v));
            }
            rest = suffix;
        }
        None
    }

    fn step(&self, n: &str) -> Option<Step<'_>> {
        if let Some(s) = self.direct(n) {
            return Some(s);
        }
        // `<known>.<search domain>`: what a stub resolver tries first for a name with fewer
        // than ndots dots.
        self.search.iter().find_map(|s| {
            let base = n.strip_suffix(s.as_str())?.strip_suffix('.')?;
            self.direct(base).map(|_| Step::Alias(base.to_string()))
        })
    }

    /// Follows `name` through the table; `None` when the table knows nothing of it.
    pub fn resolve(&self, name: &str) -> Option<Resolved<'_>> {
        let mut cur = norm(name);
        let mut chain: Vec<(String, String)> = Vec::new();
        for _ in 0..MAX_CHAIN {
            match self.step(&cur) {
                Some(Step::Addrs(v)) => {
                    return Some(Resolved {
                        chain,
                        addrs: Some(v),
                        last: cur,
                    })
                }
                Some(Step::Alias(t)) => {
                    if chain.iter().any(|(o, _)| *o == t) || t == cur {
                        break; // a loop: stop here
                    }
                    chain.push((cur, t.clone()));
                    cur = t;
                }
                None if chain.is_empty() => return None,
                None => break,
            }
        }
        Some(Resolved {
            chain,
            addrs: None,
            last: cur,
        })
    }

    /// The addresses of `name`: itself, a wildcard over it, a CNAME in the table, or `name`
    /// minus one of the search suffixes (the expansion a stub resolver made of a short name).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.resolve(name)?.addrs
    }

    /// Whether `name` cannot exist in Kubernetes DNS: under `svc.<cluster domain>` with more
    /// labels in front than `hostname.service.namespace`.
    pub fn impossible(&self, name: &str) -> bool {
        let Some(domain) = &self.cluster_domain else {
            return false;
        };
        let n = norm(name);
        let Some(front) = n
            .strip_suffix(domain.as_str())
            .and_then(|f| f.strip_suffix(".svc."))
        else {
            return false;
        };
        front.split('.').count() > 3
    }
}

/// A table that a running proxy reads and a watcher replaces.
#[derive(Debug, Clone, Default)]
pub struct SharedTable(Arc<ArcSwap<Table>>);

impl SharedTable {
    pub fn new(t: Table) -> SharedTable {
        SharedTable(Arc::new(ArcSwap::from_pointee(t)))
    }

    pub fn get(&self) -> Arc<Table> {
        self.0.load_full()
    }

    pub fn set(&self, t: Table) {
        self.0.store(Arc::new(t));
    }
}

fn read(p: &str) -> Result<String, DnsError> {
    std::fs::read_to_string(p).map_err(|source| DnsError::Read {
        path: p.into(),
        source,
    })
}

/// `nameserver` and `search` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> (Vec<SocketAddr>, Vec<String>) {
    let (mut ns, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(ip) = w.next().and_then(|a| a.parse::<IpAddr>().ok()) {
                    ns.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") | Some("domain") => search = w.map(str::to_string).collect(),
            _ => {}
        }
    }
    (ns, search)
}

/// A locally built answer. `chase` is the last CNAME target when it is outside the table: its
/// addresses come from the upstream resolvers and are appended to `response`.
#[derive(Debug, Clone)]
pub struct Local {
    pub response: Message,
    pub chase: Option<Name>,
}

/// The local answer to `req`, or `None` when it must be forwarded (CNAME targets outside the
/// table are left unresolved here; [`Proxy::handle`] resolves them upstream).
pub fn answer_locally(table: &Table, req: &Message) -> Option<Message> {
    local_answer(table, req).map(|l| l.response)
}

/// The local answer to `req` with what must still be asked upstream, or `None` to forward.
pub fn local_answer(table: &Table, req: &Message) -> Option<Local> {
    let [q] = req.queries.as_slice() else {
        return None;
    };
    let qt = q.query_type();
    let qname = q.name().to_ascii();
    let response = |code: ResponseCode| {
        let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
        resp.metadata = Metadata::response_from_request(&req.metadata);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_available = true;
        resp.metadata.response_code = code;
        resp.add_query(q.clone());
        resp
    };
    let Some(found) = table.resolve(&qname) else {
        if table.impossible(&qname) {
            return Some(Local {
                response: response(ResponseCode::NXDomain),
                chase: None,
            });
        }
        return None;
    };
    // As istio-agent: only address questions are answered for mesh hosts.
    if !matches!(qt, RecordType::A | RecordType::AAAA) {
        return None;
    }
    let mut resp = response(ResponseCode::NoError);
    let mut owner = q.name().clone();
    for (_, target) in &found.chain {
        let t = Name::from_ascii(format!("{target}.")).ok()?;
        resp.add_answer(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::CNAME(CNAME(t.clone())),
        ));
        owner = t;
    }
    let Some(ips) = found.addrs else {
        return Some(Local {
            response: resp,
            chase: Some(owner),
        });
    };
    for ip in ips {
        let rdata = match (ip, qt) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue, // the name exists without this family: NOERROR, no data
        };
        resp.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
    }
    Some(Local {
        response: resp,
        chase: None,
    })
}

/// Forwards raw query bytes to the upstreams in order; the first answer wins.
async fn forward(upstreams: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    for up in upstreams {
        let got = if tcp {
            tcp_exchange(*up, query).await
        } else {
            match udp_exchange(*up, query).await {
                // Truncated: ask again over TCP.
                Some(r) if Message::from_vec(&r).is_ok_and(|m| m.metadata.truncation) => {
                    tcp_exchange(*up, query).await.or(Some(r))
                }
                other => other,
            }
        };
        if got.is_some() {
            return got;
        }
    }
    None
}

async fn udp_exchange(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).await.ok()?;
    s.connect(up).await.ok()?;
    s.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let id = query.get(..2)?;
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, s.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if buf.get(..2) == Some(id) {
            return Some(buf[..n].to_vec());
        }
    }
}

async fn tcp_exchange(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let go = async {
        let mut s = TcpStream::connect(up).await?;
        s.write_all(&(query.len() as u16).to_be_bytes()).await?;
        s.write_all(query).await?;
        read_framed(&mut s).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, go).await.ok()?.ok()
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The DNS proxy: its table and upstreams.
#[derive(Debug)]
pub struct Proxy {
    pub table: SharedTable,
    pub upstreams: Vec<SocketAddr>,
}

impl Proxy {
    /// From a hosts-file and a resolv.conf (its nameservers become the upstreams, its search
    /// domains the expansions answered locally).
    pub fn from_files(hosts: Option<&str>, resolv_conf: &str) -> Result<Proxy, DnsError> {
        let (upstreams, search) = parse_resolv_conf(&read(resolv_conf)?);
        let mut table = Table::new(search);
        if let Some(h) = hosts {
            table.add_hosts_file(&read(h)?, h)?;
        }
        Ok(Proxy {
            table: SharedTable::new(table),
            upstreams,
        })
    }

    /// The response bytes for one query (`None`: drop it, as for garbage).
    pub async fn handle(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        if req.metadata.message_type != MessageType::Query {
            return None;
        }
        registry().counter("dns.requests_total").inc();
        let table = self.table.get();
        if let Some(mut local) = local_answer(&table, &req) {
            registry().counter("dns.local_answers_total").inc();
            if local.response.metadata.response_code == ResponseCode::NXDomain {
                registry().counter("dns.local_nxdomain_total").inc();
            }
            if let Some(target) = local.chase.take() {
                self.chase(&mut local.response, target, tcp).await;
            }
            return local.response.to_vec().ok();
        }
        registry().counter("dns.forwarded_total").inc();
        match forward(&self.upstreams, query, tcp).await {
            Some(r) => Some(r),
            None => {
                registry().counter("dns.upstream_failures_total").inc();
                let mut m =
                    Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
                m.metadata = Metadata::response_from_request(&req.metadata);
                m.metadata.response_code = ResponseCode::ServFail;
                m.queries = req.queries.clone();
                m.to_vec().ok()
            }
        }
    }

    /// Appends the upstream answer for `target` (a CNAME target outside the mesh) to `resp`,
    /// as a recursive resolver returns the whole chain; its NXDOMAIN becomes the answer's.
    async fn chase(&self, resp: &mut Message, target: Name, tcp: bool) {
        let Some(qt) = resp.queries.first().map(|q| q.query_type()) else {
            return;
        };
        registry().counter("dns.cname_chased_total").inc();
        let mut sub = Message::query();
        sub.metadata.id = resp.metadata.id;
        sub.metadata.recursion_desired = true;
        sub.add_query(Query::query(target.clone(), qt));
        let Ok(bytes) = sub.to_vec() else { return };
        let Some(got) = forward(&self.upstreams, &bytes, tcp).await else {
            registry().counter("dns.upstream_failures_total").inc();
            tracing::debug!(%target, "CNAME target did not resolve upstream");
            return;
        };
        let Ok(m) = Message::from_vec(&got) else {
            return;
        };
        if m.metadata.response_code == ResponseCode::NXDomain {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        resp.answers.extend(m.answers);
    }

    /// Binds UDP and TCP on `addr` (errors stop startup), then serves in the background.
    pub async fn bind_and_serve(self, addr: SocketAddr) -> Result<SocketAddr, DnsError> {
        let bind_err = |source| DnsError::Bind { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        let tcp = TcpListener::bind(bound).await.map_err(bind_err)?;
        let me = Arc::new(self);
        tracing::info!(
            address = %bound,
            upstreams = ?me.upstreams,
            names = me.table.get().len(),
            "DNS proxy started"
        );
        tokio::spawn(serve_udp(me.clone(), Arc::new(udp)));
        tokio::spawn(serve_tcp(me, tcp));
        Ok(bound)
    }
}

async fn serve_udp(p: Arc<Proxy>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let (p, sock, q) = (p.clone(), sock.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            if let Some(mut r) = p.handle(&q, false).await {
                if r.len() > 512 {
                    // Too big for plain UDP: truncate so the client retries over TCP.
                    if let Ok(m) = Message::from_vec(&r) {
                        r = m.truncate().to_vec().unwrap_or(r);
                    }
                }
                let _ = sock.send_to(&r, from).await;
            }
        });
    }
}

async fn serve_tcp(p: Arc<Proxy>, l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let p = p.clone();
        tokio::spawn(async move {
            // Several queries may share one connection.
            while let Ok(Ok(q)) =
                tokio::time::timeout(Duration::from_secs(10), read_framed(&mut s)).await
            {
                let Some(r) = p.handle(&q, true).await else {
                    return;
                };
                if s.write_all(&(r.len() as u16).to_be_bytes()).await.is_err()
                    || s.write_all(&r).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn table() -> Table {
        let mut t = Table::new(vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ]);
        t.add_hosts_file(
            "# mesh\n198.19.0.10 reviews.default.svc.cluster.local\nfd00::1 reviews.default.svc.cluster.local\n198.19.0.20 api.example.com\n",
            "hosts",
        )
        .unwrap();
        t
    }

    #[test]
    fn lookup_by_name_and_search_expansion() {
        let t = table();
        assert_eq!(
            t.lookup("Reviews.default.svc.cluster.local.")
                .unwrap()
                .len(),
            2
        );
        // `api.example.com` with ndots:5 is first tried as api.example.com.<search>.
        assert!(t
            .lookup("api.example.com.default.svc.cluster.local")
            .is_some());
        assert!(t
            .lookup("reviews.default.svc.cluster.local.svc.cluster.local")
            .is_some());
        assert!(t.lookup("reviews").is_none());
        assert!(t.lookup("other.default.svc.cluster.local").is_none());
    }

    #[test]
    fn bad_hosts_lines_are_named() {
        let mut t = Table::default();
        let e = t
            .add_hosts_file("1.2.3.4 ok\nnot-ip name\n", "h")
            .unwrap_err();
        assert_eq!(e.to_string(), "h line 2: \"not-ip\" is not an IP address");
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    #[test]
    fn answers_a_and_aaaa_and_nodata() {
        let t = table();
        let r = answer_locally(
            &t,
            &query("reviews.default.svc.cluster.local.", RecordType::A),
        )
        .unwrap();
        assert_eq!(r.answers.len(), 1);
        assert!(matches!(r.answers[0].data, RData::A(A(ip)) if ip.to_string() == "198.19.0.10"));
        let r = answer_locally(
            &t,
            &query("reviews.default.svc.cluster.local.", RecordType::AAAA),
        )
        .unwrap();
        assert_eq!(r.answers.len(), 1);
        let r = answer_locally(&t, &query("api.example.com.", RecordType::AAAA)).unwrap();
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(answer_locally(&t, &query("unknown.test.", RecordType::A)).is_none());
        assert!(answer_locally(&t, &query("api.example.com.", RecordType::MX)).is_none());
    }

    #[test]
    fn wildcards_cnames_and_loops() {
        let mut t = Table::new(vec!["ns1.svc.cluster.local".into()]);
        t.add("*.example.com", "192.0.2.1".parse().unwrap());
        t.add_cname("alias.test", "a.example.com");
        t.add_cname("loop1.test", "loop2.test");
        t.add_cname("loop2.test", "loop1.test");
        assert_eq!(t.lookup("x.y.example.com").unwrap().len(), 1);
        assert!(t.lookup("example.com").is_none());
        // A wildcard's expansion, and a CNAME into a wildcard.
        assert!(t.lookup("a.example.com.ns1.svc.cluster.local").is_some());
        let r = t.resolve("alias.test.").unwrap();
        assert_eq!(
            r.chain,
            vec![("alias.test".to_string(), "a.example.com".to_string())]
        );
        assert!(r.addrs.is_some());
        // A loop ends, unresolved, instead of spinning.
        assert!(t.resolve("loop1.test").unwrap().addrs.is_none());
        // Addresses beat a CNAME for the same name.
        t.add("alias.test", "192.0.2.9".parse().unwrap());
        t.add_cname("alias.test", "elsewhere.test");
        assert_eq!(t.resolve("alias.test").unwrap().chain, vec![]);
        // No cluster domain, no structural NXDOMAIN.
        assert!(!t.impossible("a.b.c.d.svc.cluster.local"));
        t.set_cluster_domain("cluster.local");
        assert!(t.impossible("a.b.c.d.svc.cluster.local."));
        assert!(!t.impossible("a.b.c.svc.cluster.local"));
        assert!(!t.impossible("a.b.c.d.e.cluster.local"));
    }

    /// A CNAME to a name outside the mesh comes back with the upstream's addresses.
    #[tokio::test]
    async fn cname_targets_are_resolved_upstream() {
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                let req = Message::from_vec(&buf[..n]).unwrap();
                let mut resp =
                    Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
                resp.metadata = Metadata::response_from_request(&req.metadata);
                resp.queries = req.queries.clone();
                let q = &req.queries[0];
                if q.name().to_ascii() == "ext.test." {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A("198.19.99.99".parse().unwrap())),
                    ));
                } else {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = up.send_to(&resp.to_vec().unwrap(), from).await;
            }
        });
        let mut t = Table::new(vec![]);
        t.add_cname("legacy.default.svc.cluster.local", "ext.test");
        t.add_cname("gone.default.svc.cluster.local", "gone.test");
        let p = Proxy {
            table: SharedTable::new(t),
            upstreams: vec![up_addr],
        };
        let q = query("legacy.default.svc.cluster.local.", RecordType::A);
        let r = Message::from_vec(&p.handle(&q.to_vec().unwrap(), false).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 2, "{:?}", r.answers);
        assert!(
            matches!(&r.answers[0].data, RData::CNAME(CNAME(n)) if n.to_ascii() == "ext.test.")
        );
        assert!(matches!(&r.answers[1].data, RData::A(A(ip)) if ip.to_string() == "198.19.99.99"));
        let q = query("gone.default.svc.cluster.local.", RecordType::A);
        let r = Message::from_vec(&p.handle(&q.to_vec().unwrap(), false).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.answers.len(), 1);
        // The table can be swapped under a running proxy.
        p.table.set(Table::new(vec![]));
        let q = query("legacy.default.svc.cluster.local.", RecordType::A);
        let r = Message::from_vec(&p.handle(&q.to_vec().unwrap(), false).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(!r.metadata.authoritative, "forwarded now");
    }

    #[test]
    fn resolv_conf() {
        let (ns, search) = parse_resolv_conf(
            "nameserver 10.96.0.10\nsearch ns1.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        );
        assert_eq!(ns, vec!["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(search.len(), 2);
    }
}
