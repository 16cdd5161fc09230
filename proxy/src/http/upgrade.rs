//! The downstream side of an upgraded request (WebSocket and the like after a `101`, CONNECT
//! after a `2xx`): the raw connection once the response head went out. HTTP/1.1 connections
//! (served by `h1.rs`) hand over their socket and the bytes already read past the request;
//! HTTP/2 CONNECT streams come from hyper.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Resolves to the upgraded connection once the response head is written (never, if the
/// response did not upgrade). Taken from the request's extensions.
pub enum OnUpgrade {
    Http1(oneshot::Receiver<Upgraded>),
    Hyper(hyper::upgrade::OnUpgrade),
}

impl OnUpgrade {
    /// Takes it from a request (present on upgrade and CONNECT requests).
    pub fn take(ext: &mut http::Extensions) -> Option<OnUpgrade> {
        if let Some(rx) = ext
            .remove::<Http1Upgrade>()
            .and_then(|u| u.0.lock().ok()?.take())
        {
            return Some(OnUpgrade::Http1(rx));
        }
        ext.remove::<hyper::upgrade::OnUpgrade>()
            .map(OnUpgrade::Hyper)
    }

    /// The upgraded connection, or `None` if the connection went away first.
    pub async fn wait(self) -> Option<Upgraded> {
        match self {
            OnUpgrade::Http1(rx) => rx.await.ok(),
            OnUpgrade::Hyper(u) => u.await.ok().map(|u| Upgraded::Hyper(TokioIo::new(u))),
        }
    }
}

/// What `h1.rs` puts in an upgrade request's extensions (`OnUpgrade::take` reads it).
/// Extensions must be `Clone`; only one taker gets the receiver.
#[derive(Clone)]
pub(crate) struct Http1Upgrade(pub(crate) Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl Http1Upgrade {
    pub(crate) fn new(rx: oneshot::Receiver<Upgraded>) -> Http1Upgrade {
        Http1Upgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// An upgraded downstream connection.
pub enum Upgraded {
    /// The HTTP/1.1 socket and what the client sent after the request head.
    Http1 {
        io: TcpStream,
        read_ahead: Bytes,
    },
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Http1 { io, read_ahead } => {
                if !read_ahead.is_empty() {
                    let n = read_ahead.len().min(buf.remaining());
                    buf.put_slice(&read_ahead[..n]);
                    read_ahead.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(io).poll_read(cx, buf)
            }
            Upgraded::Hyper(u) => Pin::new(u).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upgraded::Http1 { io, .. } => Pin::new(io).poll_write(cx, buf),
            Upgraded::Hyper(u) => Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Http1 { io, .. } => Pin::new(io).poll_flush(cx),
            Upgraded::Hyper(u) => Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Http1 { io, .. } => Pin::new(io).poll_shutdown(cx),
            Upgraded::Hyper(u) => Pin::new(u).poll_shutdown(cx),
        }
    }
}
