//! The upstream every target forwards to: a minimal hyper server (HTTP/1.1 and h2c on one port,
//! keep-alive) and a TCP echo/sink, both on one current-thread runtime in their own thread.
//!
//! HTTP paths: `/16k` answers 16 KiB, `/grpc` answers a gRPC-shaped unary reply (length-prefixed
//! message, `grpc-status: 0` trailer), `/grpc-stream` is a bidirectional gRPC-shaped echo (each
//! request message is sent back as soon as it is whole; the request's end brings the trailer),
//! anything else answers the 2-byte body `ok`.
//!
//! TCP: the first byte picks the mode. `E`: echo everything back. `S`: sink; after every
//! [`BULK_CHUNK`] bytes received, answer one byte (`!`), so the client times whole transfers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Size of one bulk transfer.
pub const BULK_CHUNK: usize = 1 << 20;
pub const SMALL: &[u8] = b"ok";
pub const LARGE_LEN: usize = 16 * 1024;

pub struct Upstream {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
}

/// Starts the upstream on a new thread pinned to `cpu` (if any); returns its addresses.
pub fn start(cpu: Option<usize>) -> anyhow::Result<Upstream> {
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    http.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let addrs = Upstream {
        http: http.local_addr()?,
        tcp: tcp.local_addr()?,
    };
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            if let Some(c) = cpu {
                let _ = crate::sys::pin_current(c);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let http = TcpListener::from_std(http).unwrap();
                let tcp = TcpListener::from_std(tcp).unwrap();
                tokio::spawn(serve_tcp(tcp));
                serve_http(http).await;
            });
        })?;
    Ok(addrs)
}

async fn serve_http(l: TcpListener) {
    let large = Bytes::from(vec![b'x'; LARGE_LEN]);
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let large = large.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let large = large.clone();
                async move { Ok::<_, Infallible>(answer(req, large).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, large: Bytes) -> Response<UpBody> {
    let path = req.uri().path();
    if path == "/grpc-stream" {
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(Either::Right(EchoBody {
                incoming: req.into_body(),
                pending: BytesMut::new(),
                ended: false,
            }))
            .unwrap();
    }
    if path == "/grpc" {
        // Drain the request message, answer one 2-byte message and the OK trailer.
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        let trailers = grpc_ok();
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(Either::Left(OnceBody {
                data: Some(Bytes::from_static(&[0, 0, 0, 0, 2, b'o', b'k'])),
                trailers: Some(trailers),
            }))
            .unwrap();
    }
    let data = if path == "/16k" {
        large
    } else {
        Bytes::from_static(SMALL)
    };
    Response::builder()
        .header("content-type", "text/plain")
        .body(Either::Left(OnceBody::data(Some(data))))
        .unwrap()
}

/// The upstream's response bodies.
pub type UpBody = Either<OnceBody, EchoBody>;

/// One data frame (if any), then optional trailers: the upstream's answers, and the bench
/// client's whole request bodies.
pub struct OnceBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl OnceBody {
    /// A body of `data` alone (`None`: an empty body, which ends with the head).
    pub fn data(data: Option<Bytes>) -> OnceBody {
        OnceBody {
            data,
            trailers: None,
        }
    }
}

impl Body for OnceBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The bidirectional gRPC echo: request messages (5-byte prefix: compression flag, 4-byte
/// big-endian length) go back as soon as they are whole, and the request's end brings the
/// `grpc-status: 0` trailer.
pub struct EchoBody {
    incoming: Incoming,
    pending: BytesMut,
    ended: bool,
}

/// How many leading bytes of `b` are whole gRPC messages.
pub fn whole_messages(b: &[u8]) -> usize {
    let mut at = 0;
    while b.len() - at >= 5 {
        let len = u32::from_be_bytes([b[at + 1], b[at + 2], b[at + 3], b[at + 4]]) as usize;
        if b.len() - at - 5 < len {
            break;
        }
        at += 5 + len;
    }
    at
}

/// Whether trailers say the call succeeded (`grpc-status: 0`).
pub fn is_grpc_ok(trailers: Option<&HeaderMap>) -> bool {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|v| v == "0")
}

fn grpc_ok() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let e = self.get_mut();
        loop {
            if e.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut e.incoming).poll_frame(cx)) {
                Some(Ok(f)) => {
                    let Ok(d) = f.into_data() else { continue };
                    e.pending.extend_from_slice(&d);
                    let n = whole_messages(&e.pending);
                    if n > 0 {
                        let out = e.pending.split_to(n).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                // A broken request ends the answer without the OK trailer.
                Some(Err(_)) => {
                    e.ended = true;
                    return Poll::Ready(None);
                }
                None => {
                    e.ended = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(grpc_ok()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

async fn serve_tcp(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut in_chunk = 0usize;
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if mode[0] == b'E' {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                } else {
                    in_chunk += n;
                    while in_chunk >= BULK_CHUNK {
                        in_chunk -= BULK_CHUNK;
                        if s.write_all(b"!").await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_stops_at_a_partial_one() {
        assert_eq!(whole_messages(&[]), 0);
        assert_eq!(whole_messages(&[0, 0, 0, 0]), 0);
        assert_eq!(whole_messages(&[0, 0, 0, 0, 0]), 5);
        let two = [0, 0, 0, 0, 2, 7, 7, 0, 0, 0, 0, 1, 9];
        assert_eq!(whole_messages(&two), 13);
        assert_eq!(whole_messages(&two[..12]), 7);
        assert_eq!(whole_messages(&[0, 0, 0, 1, 0, 1]), 0);
    }
}
