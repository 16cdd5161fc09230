//! The pod application and its clients. The application answers every connection with one
//! line naming itself and the addresses the connection has on its side:
//! `app=<pod> local=<ip:port> peer=<ip:port>`. It reads the client's first line first
//! (client-speaks-first, so listener inspection never waits); a request line starting with
//! `GET ` gets the same line as an HTTP/1.1 response body.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{enter_netns, Netns};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the application saw for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub app: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Report {
    pub fn parse(line: &str) -> Result<Report, String> {
        let mut app = None;
        let (mut local, mut peer) = (None, None);
        for w in line.split_whitespace() {
            if let Some(v) = w.strip_prefix("app=") {
                app = Some(v.to_string());
            } else if let Some(v) = w.strip_prefix("local=") {
                local = v.parse().ok();
            } else if let Some(v) = w.strip_prefix("peer=") {
                peer = v.parse().ok();
            }
        }
        match (app, local, peer) {
            (Some(app), Some(local), Some(peer)) => Ok(Report { app, local, peer }),
            _ => Err(format!("not an application report: {line:?}")),
        }
    }
}

/// An application listening on one port of a pod, on its own thread inside the pod's
/// namespace. Stops (and closes its socket) when dropped.
pub struct App {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    pub fn start(ns: &Netns, name: &'static str, port: u16) -> App {
        let path = format!("/run/netns/{}", ns.name);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let bound = enter_netns(&path).and_then(|_| {
                let l = TcpListener::bind(("0.0.0.0", port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let l = match bound {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let _ = answer(name, s, peer);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv()
            .expect("application thread")
            .unwrap_or_else(|e| panic!("application {name}:{port} in {}: {e}", ns.name));
        App {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(name: &str, s: TcpStream, peer: SocketAddr) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = s.local_addr()?;
    let report = format!("app={name} local={local} peer={peer}\n");
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut w = s;
    if first.starts_with("GET ") {
        let mut line = String::new();
        while r.read_line(&mut line)? > 2 {
            line.clear();
        }
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{report}",
            report.len()
        )?;
    } else {
        w.write_all(report.as_bytes())?;
    }
    w.flush()?;
    let _ = w.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One plain TCP exchange from inside `ns`.
pub fn call(ns: &Netns, addr: SocketAddr) -> Result<Report, String> {
    let out = ns
        .enter(move || -> io::Result<String> {
            let mut s = connect(addr)?;
            s.write_all(b"hello\n")?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            Ok(got)
        })
        .map_err(|e| format!("enter {}: {e}", ns.name))?
        .map_err(|e| format!("call {addr} from {}: {e}", ns.name))?;
    Report::parse(out.trim())
}

/// A raw HTTP/1.1 GET from inside `ns`; returns the status and the response head+body text.
pub fn http_raw(ns: &Netns, addr: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    ns.enter(move || -> io::Result<String> {
        let mut s = connect(addr)?;
        s.write_all(req.as_bytes())?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })
    .map_err(|e| format!("enter {}: {e}", ns.name))?
    .map_err(|e| format!("GET {addr}{path} from {}: {e}", ns.name))
}

/// An HTTP GET answered by a pod application (through whatever proxies are in the way).
pub fn http_get(ns: &Netns, addr: SocketAddr, host: &str) -> Result<(u16, Report), String> {
    let resp = http_raw(ns, addr, host, "/")?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {resp:?}"))?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok((status, Report::parse(body.trim())?))
}
