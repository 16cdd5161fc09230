//! The downstream side of an upgraded request (WebSocket and the like after a `101`, CONNECT
//! after a `2xx`): the raw connection once the response head went out. HTTP/1.1 connections
//! (served by `h1.rs`) hand over their socket and the bytes already read past the request;
//! HTTP/2 CONNECT streams (served by `h2.rs`) become a byte tunnel over the stream.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::h2stream::Tunnel;

/// Resolves to the upgraded connection once the response head is written (never, if the
/// response did not upgrade). Taken from the request's extensions.
pub struct OnUpgrade(oneshot::Receiver<Upgraded>);

impl OnUpgrade {
    /// Takes it from a request (present on upgrade and CONNECT requests).
    pub fn take(ext: &mut http::Extensions) -> Option<OnUpgrade> {
        ext.remove::<PendingUpgrade>()
            .and_then(|u| u.0.lock().ok()?.take())
            .map(OnUpgrade)
    }

    /// The upgraded connection, or `None` if the connection went away first.
    pub async fn wait(self) -> Option<Upgraded> {
        self.0.await.ok()
    }
}

/// What the connection puts in an upgrade request's extensions (`OnUpgrade::take` reads it);
/// the connection sends the upgraded connection once the response head is out. Extensions must
/// be `Clone`; only one taker gets the receiver.
#[derive(Clone)]
pub(crate) struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub(crate) fn new(rx: oneshot::Receiver<Upgraded>) -> PendingUpgrade {
        PendingUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// An upgraded downstream connection.
pub enum Upgraded {
    /// The HTTP/1.1 socket and what the client sent after the request head.
    Http1 { io: TcpStream, read_ahead: Bytes },
    /// An HTTP/2 CONNECT stream.
    H2(Tunnel),
    /// An HTTP/2 CONNECT stream on Sluice's own codec.
    Own(crate::http2::stream::Tunnel),
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
            Upgraded::H2(u) => Pin::new(u).poll_read(cx, buf),
            Upgraded::Own(u) => Pin::new(u).poll_read(cx, buf),
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
            Upgraded::H2(u) => Pin::new(u).poll_write(cx, buf),
            Upgraded::Own(u) => Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Http1 { io, .. } => Pin::new(io).poll_flush(cx),
            Upgraded::H2(u) => Pin::new(u).poll_flush(cx),
            Upgraded::Own(u) => Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Http1 { io, .. } => Pin::new(io).poll_shutdown(cx),
            Upgraded::H2(u) => Pin::new(u).poll_shutdown(cx),
            Upgraded::Own(u) => Pin::new(u).poll_shutdown(cx),
        }
    }
}
