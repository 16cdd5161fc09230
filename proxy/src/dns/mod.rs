//! The mesh DNS proxy (istio-agent's, on 15053): with `sluice-iptables --redirect-dns` the
//! application's DNS to its nameserver (UDP and TCP, port 53) lands here. A/AAAA questions for
//! mesh hosts are answered locally, including the search-suffix expansions a resolver with
//! `ndots:5` tries first (`reviews.default.svc.cluster.local.svc.cluster.local`… is answered
//! for the known `reviews.default.svc.cluster.local` only when it is that name plus a search
//! suffix). Everything else is forwarded to the resolvers from the pod's resolv.conf: UDP
//! first, again over TCP when the answer comes back truncated; TCP questions go over TCP.
//! The wire format is hickory-proto's.
//!
//! Hosts come from a hosts-file (`ip name…` lines); the Istio translation can fill the same
//! [`Table`] from services and ServiceEntries.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::stats::registry;

/// TTL of local answers, as istio-agent's (30s).
const TTL: u32 = 30;
/// How long one upstream exchange may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// Mesh hosts and the pod's search domains.
#[derive(Debug, Clone, Default)]
pub struct Table {
    hosts: HashMap<String, Vec<IpAddr>>,
    search: Vec<String>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    pub fn new(search: Vec<String>) -> Table {
        Table {
            hosts: HashMap::new(),
            search: search.iter().map(|s| norm(s)).collect(),
        }
    }

    pub fn add(&mut self, name: &str, ip: IpAddr) {
        let e = self.hosts.entry(norm(name)).or_default();
        if !e.contains(&ip) {
            e.push(ip);
        }
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

    /// The addresses of `name`: itself, or `name` minus one of the search suffixes (the
    /// expansion a stub resolver made of a short name).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let n = norm(name);
        if let Some(v) = self.hosts.get(&n) {
            return Some(v);
        }
        self.search.iter().find_map(|s| {
            let base = n.strip_suffix(s.as_str())?.strip_suffix('.')?;
            self.hosts.get(base).map(Vec::as_slice)
        })
    }
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

/// The local answer to `req`, or `None` when it must be forwarded.
pub fn answer_locally(table: &Table, req: &Message) -> Option<Message> {
    let [q] = req.queries.as_slice() else {
        return None;
    };
    let qt = q.query_type();
    if !matches!(qt, RecordType::A | RecordType::AAAA) {
        return None;
    }
    let ips = table.lookup(&q.name().to_ascii())?;
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = ResponseCode::NoError;
    resp.add_query(q.clone());
    for ip in ips {
        let rdata = match (ip, qt) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue, // the name exists without this family: NOERROR, no data
        };
        resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
    }
    Some(resp)
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
    pub table: Table,
    pub upstreams: Vec<SocketAddr>,
}

impl Proxy {
    /// From a hosts-file and a resolv.conf (its nameservers become the upstreams, its search
    /// domains the expansions answered locally).
    pub fn from_files(hosts: Option<&str>, resolv_conf: &str) -> Result<Proxy, DnsError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| DnsError::Read {
                path: p.into(),
                source,
            })
        };
        let (upstreams, search) = parse_resolv_conf(&read(resolv_conf)?);
        let mut table = Table::new(search);
        if let Some(h) = hosts {
            table.add_hosts_file(&read(h)?, h)?;
        }
        Ok(Proxy { table, upstreams })
    }

    /// The response bytes for one query (`None`: drop it, as for garbage).
    pub async fn handle(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        if req.metadata.message_type != MessageType::Query {
            return None;
        }
        registry().counter("dns.requests_total").inc();
        if let Some(resp) = answer_locally(&self.table, &req) {
            registry().counter("dns.local_answers_total").inc();
            return resp.to_vec().ok();
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

    /// Binds UDP and TCP on `addr` (errors stop startup), then serves in the background.
    pub async fn bind_and_serve(self, addr: SocketAddr) -> Result<SocketAddr, DnsError> {
        let bind_err = |source| DnsError::Bind { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        let tcp = TcpListener::bind(bound).await.map_err(bind_err)?;
        let me = Arc::new(self);
        tracing::info!(address = %bound, upstreams = ?me.upstreams, "DNS proxy started");
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
    fn resolv_conf() {
        let (ns, search) = parse_resolv_conf(
            "nameserver 10.96.0.10\nsearch ns1.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        );
        assert_eq!(ns, vec!["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(search.len(), 2);
    }
}
