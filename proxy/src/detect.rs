//! Protocol detection on a connection's first bytes, as Envoy's `tls_inspector` and
//! `http_inspector` listener filters do: TLS (with SNI and ALPN from the ClientHello), HTTP/2
//! (the client preface), HTTP/1.x (a request line), or opaque bytes. Pure functions over a
//! buffer, plus the peek loop that feeds them with a bounded wait.

use std::time::Duration;

use tokio::net::TcpStream;

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello.
    Tls {
        sni: Option<String>,
        alpn: Vec<String>,
    },
    /// The HTTP/2 connection preface (h2c).
    Http2,
    /// An HTTP/1.x request line; `minor` is the version's minor digit.
    Http1 { minor: u8 },
    /// Anything else.
    Opaque,
}

/// The result so far: decided, or more bytes are needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done(Detected),
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "PURGE",
];
/// Longest request line the HTTP inspector waits for.
const MAX_LINE: usize = 8192;

/// Classifies `buf` (the bytes peeked so far; `eof` when no more will come).
pub fn classify(buf: &[u8], eof: bool) -> Progress {
    if buf.is_empty() {
        return if eof {
            Progress::Done(Detected::Opaque)
        } else {
            Progress::NeedMore
        };
    }
    if buf[0] == 0x16 {
        return match client_hello(buf) {
            Hello::Done(sni, alpn) => Progress::Done(Detected::Tls { sni, alpn }),
            Hello::NeedMore if !eof => Progress::NeedMore,
            _ => Progress::Done(Detected::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Progress::Done(Detected::Http2)
        } else if eof {
            Progress::Done(Detected::Opaque)
        } else {
            Progress::NeedMore
        };
    }
    http1(buf, eof)
}

fn http1(buf: &[u8], eof: bool) -> Progress {
    // Method token, then a space.
    let Some(sp) = buf.iter().take(16).position(|b| *b == b' ') else {
        let could_be_method = buf.len() < 16
            && METHODS
                .iter()
                .any(|m| m.as_bytes().starts_with(buf) || buf.starts_with(m.as_bytes()));
        return if could_be_method && !eof {
            Progress::NeedMore
        } else {
            Progress::Done(Detected::Opaque)
        };
    };
    let Ok(method) = std::str::from_utf8(&buf[..sp]) else {
        return Progress::Done(Detected::Opaque);
    };
    if !METHODS.contains(&method) {
        return Progress::Done(Detected::Opaque);
    }
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if eof || buf.len() > MAX_LINE {
            Progress::Done(Detected::Opaque)
        } else {
            Progress::NeedMore
        };
    };
    let line = &buf[..eol];
    if line.len() >= 9 && line[line.len() - 9..line.len() - 1] == *b" HTTP/1." {
        let minor = line[line.len() - 1];
        if minor == b'0' || minor == b'1' {
            return Progress::Done(Detected::Http1 {
                minor: minor - b'0',
            });
        }
    }
    Progress::Done(Detected::Opaque)
}

enum Hello {
    Done(Option<String>, Vec<String>),
    NeedMore,
    Invalid,
}

/// Parses a TLS ClientHello (possibly spread over several records) for SNI and ALPN.
fn client_hello(buf: &[u8]) -> Hello {
    // Reassemble handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut pos = 0;
    loop {
        if buf.len() < pos + 5 {
            break;
        }
        if buf[pos] != 0x16 || buf[pos + 1] != 3 {
            return Hello::Invalid;
        }
        let len = u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Hello::Invalid;
        }
        let end = (pos + 5 + len).min(buf.len());
        hs.extend_from_slice(&buf[pos + 5..end]);
        if end < pos + 5 + len {
            break;
        }
        pos = end;
        if hs.len() >= 4 {
            let need = 4 + u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs.len() >= need {
                break;
            }
        }
    }
    if hs.len() < 4 {
        return Hello::NeedMore;
    }
    if hs[0] != 1 {
        return Hello::Invalid;
    }
    let body_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
    if body_len > 65536 {
        return Hello::Invalid;
    }
    if hs.len() < 4 + body_len {
        return Hello::NeedMore;
    }
    match parse_hello_body(&hs[4..4 + body_len]) {
        Some((sni, alpn)) => Hello::Done(sni, alpn),
        None => Hello::Invalid,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn parse_hello_body(body: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    let mut sni = None;
    let mut alpn = Vec::new();
    if r.0.is_empty() {
        return Some((None, alpn));
    }
    let ext_len = r.u16()?;
    let mut ext = Reader(r.take(ext_len)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        match ty {
            0 => {
                let mut d = Reader(data);
                let list = d.u16()?;
                let mut l = Reader(d.take(list)?);
                while !l.0.is_empty() {
                    let kind = l.u8()?;
                    let n = l.u16()?;
                    let name = l.take(n)?;
                    if kind == 0 {
                        sni = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut d = Reader(data);
                let list = d.u16()?;
                let mut l = Reader(d.take(list)?);
                while !l.0.is_empty() {
                    let n = l.u8()?;
                    alpn.push(String::from_utf8_lossy(l.take(n)?).into_owned());
                }
            }
            _ => {}
        }
    }
    Some((sni, alpn))
}

/// Peeks at a connection until the protocol is known or `timeout` passes. Returns `None` on
/// timeout (the caller decides whether to go on as opaque bytes, as Envoy's
/// `continue_on_listener_filters_timeout` does).
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Option<Detected> {
    let work = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(n) => n,
                Err(_) => return Detected::Opaque,
            };
            let eof = n == 0;
            match classify(&buf[..n], eof) {
                Progress::Done(d) => return d,
                Progress::NeedMore => {
                    if n == buf.len() {
                        if buf.len() >= 64 * 1024 {
                            return Detected::Opaque;
                        }
                        buf.resize(buf.len() * 2, 0);
                    } else {
                        // Wait for more bytes than we have already seen.
                        let mut more = vec![0u8; n + 1];
                        loop {
                            let _ = stream.readable().await;
                            match stream.peek(&mut more).await {
                                Ok(m) if m > n => break,
                                Ok(0) => return classify(&buf[..n], true).done_or_opaque(),
                                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                                Err(_) => return Detected::Opaque,
                            }
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.ok()
}

impl Progress {
    fn done_or_opaque(self) -> Detected {
        match self {
            Progress::Done(d) => d,
            Progress::NeedMore => Detected::Opaque,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with SNI and ALPN, built by hand.
    fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        // server_name
        let mut sn = vec![0u8];
        sn.extend((sni.len() as u16).to_be_bytes());
        sn.extend(sni.as_bytes());
        let mut snl = (sn.len() as u16).to_be_bytes().to_vec();
        snl.extend(sn);
        ext.extend(0u16.to_be_bytes());
        ext.extend((snl.len() as u16).to_be_bytes());
        ext.extend(snl);
        // alpn
        let mut al = Vec::new();
        for p in alpn {
            al.push(p.len() as u8);
            al.extend(p.as_bytes());
        }
        let mut all = (al.len() as u16).to_be_bytes().to_vec();
        all.extend(al);
        ext.extend(16u16.to_be_bytes());
        ext.extend((all.len() as u16).to_be_bytes());
        ext.extend(all);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn tls_sni_and_alpn() {
        let ch = client_hello("Reviews.Default.svc", &["h2", "http/1.1"]);
        assert_eq!(
            classify(&ch, false),
            Progress::Done(Detected::Tls {
                sni: Some("reviews.default.svc".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
        // Partial hello: wait for more.
        assert_eq!(classify(&ch[..20], false), Progress::NeedMore);
        assert_eq!(classify(&ch[..20], true), Progress::Done(Detected::Opaque));
    }

    #[test]
    fn http_versions() {
        assert_eq!(
            classify(b"GET /x HTTP/1.1\r\nHost: a\r\n", false),
            Progress::Done(Detected::Http1 { minor: 1 })
        );
        assert_eq!(classify(b"GET /x HTT", false), Progress::NeedMore);
        assert_eq!(classify(b"GE", false), Progress::NeedMore);
        assert_eq!(classify(H2_PREFACE, false), Progress::Done(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10], false), Progress::NeedMore);
        assert_eq!(
            classify(b"\x00\x01binary", false),
            Progress::Done(Detected::Opaque)
        );
        assert_eq!(
            classify(b"HELO example\r\n", false),
            Progress::Done(Detected::Opaque)
        );
        assert_eq!(
            classify(b"GET /x SPDY/3\r\n", false),
            Progress::Done(Detected::Opaque)
        );
    }

    #[tokio::test]
    async fn peek_waits_then_times_out_on_silence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
            s
        });
        let (s, _) = l.accept().await.unwrap();
        let d = peek(&s, Duration::from_secs(5)).await;
        assert_eq!(d, Some(Detected::Http1 { minor: 1 }));
        let _c = client.await.unwrap();
        // A silent client (server-first protocol) times out.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (s2, _) = l.accept().await.unwrap();
        assert_eq!(peek(&s2, Duration::from_millis(50)).await, None);
    }
}
