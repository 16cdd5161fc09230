//! The client side of an HTTP/2 connection (h2c with prior knowledge): [`Connection`] handles
//! open streams for requests from the requests' own tasks; [`Driver`] is the connection's task,
//! which reads the server's frames (response heads, DATA, trailers, resets, GOAWAY) and writes
//! what the streams queued. Streams past the server's GOAWAY, or refused with
//! REFUSED_STREAM, fail as [`StreamError::Refused`]: they were not processed and may be retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;

use super::conn::{Core, Read};
use super::frame::{self, ErrorCode, Frame, FrameError, Settings, PREFACE};
use super::hpack::DecodeError;
use super::request::{Head, Kind};
use super::shared::{ConnError, Inner, Shared, StreamError};
use super::stream::{ResponseFuture, SendStream};

/// This side's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list: u32,
    /// PING every `interval`; close when the PONG takes longer than `timeout`.
    pub keepalive: Option<(Duration, Duration)>,
}

/// The handle on one connection (a pool shares it in an `Arc`). The connection ends once the
/// handle is gone and no stream is open.
pub struct Connection {
    shared: Arc<Shared>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.lock().connection_handle_dropped();
    }
}

/// Starts a connection over `io`: the handle, and the task that must be spawned to run it.
pub fn start(io: tokio::net::TcpStream, config: Config) -> (Connection, Driver) {
    let mut inner = Inner::new(
        false,
        config.initial_connection_window,
        config.initial_stream_window,
    );
    inner.out_mut().extend_from_slice(PREFACE);
    let ours = Settings {
        enable_push: Some(false),
        initial_window_size: Some(config.initial_stream_window),
        max_header_list_size: Some(config.max_header_list),
        ..Settings::default()
    };
    frame::write_settings(inner.out_mut(), &ours);
    inner.open_conn_window();
    let max_block = config.max_header_list as usize + 16 * 1024;
    let core = Core::new(io, inner, max_block, config.keepalive);
    let conn = Connection {
        shared: core.shared.clone(),
    };
    (
        conn,
        Driver {
            core,
            max_header_list: config.max_header_list as usize,
        },
    )
}

impl Connection {
    /// True once the connection can take no new stream (closed, or GOAWAY received).
    pub fn is_closed(&self) -> bool {
        self.shared.refuses_new_streams()
    }

    /// Identifies the connection (equal for handles on the same one).
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Opens a stream and queues the request head (`end`: no body follows), once the server's
    /// concurrency limit allows. Fails, with nothing sent, when the connection is closed or
    /// going away.
    pub async fn open(
        &self,
        head: &Parts,
        end: bool,
    ) -> Result<(Option<SendStream>, ResponseFuture), StreamError> {
        let id =
            std::future::poll_fn(|cx| self.shared.lock().poll_open_request(cx, head, end)).await?;
        let send = (!end).then(|| SendStream::new(self.shared.clone(), id));
        Ok((send, ResponseFuture::new(self.shared.clone(), id)))
    }
}

/// The connection's task.
pub struct Driver {
    core: Core,
    max_header_list: usize,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.core.failed.is_some() {
                let _ = this.core.poll_flush(cx);
                return Poll::Ready(());
            }
            // One lock: the output written, the task's waker set, the state read.
            let (flushed, state) = this.core.poll_flush_then(cx, |inner| {
                // Nothing open and nothing more to come: a GOAWAY when the handles are gone.
                if inner.open == 0 && (inner.goaway || inner.handle_gone) {
                    if !inner.goaway {
                        let last = inner.last_opened();
                        frame::write_goaway(inner.out_mut(), last, ErrorCode::NO_ERROR, b"");
                    }
                    None
                } else {
                    Some(inner.below_high_water())
                }
            });
            if let Poll::Ready(Err(e)) = flushed {
                tracing::debug!("upstream h2 write: {e}");
                return Poll::Ready(());
            }
            let Some(below_high_water) = state else {
                // The GOAWAY, if one was queued, goes out if the socket takes it now.
                let _ = this.core.poll_flush(cx);
                return Poll::Ready(());
            };
            if this.core.poll_keepalive(cx).is_ready() {
                tracing::debug!("upstream h2 connection: no PONG in time, closing");
                return Poll::Ready(());
            }
            match this.core.poll_read(cx, below_high_water) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Read::Closed) => return Poll::Ready(()),
                Poll::Ready(Read::Bytes) => {
                    if let Err(ConnError(code, why)) = this.on_bytes() {
                        let last = {
                            let mut inner = this.core.shared.lock();
                            inner.fail_open_streams(code);
                            inner.last_opened()
                        };
                        this.core.fail(last, code, why);
                    }
                }
            }
        }
    }
}

impl Driver {
    fn on_bytes(&mut self) -> Result<(), ConnError> {
        while let Some(f) = self.core.next_frame()? {
            match f {
                Ok(f) => self.on_frame(f)?,
                Err(FrameError::Stream(id, code, why)) => {
                    tracing::debug!("upstream h2 stream {id} error {code:?}: {why}");
                    self.core.shared.lock().reset(id, code);
                }
                Err(FrameError::Connection(code, why)) => return Err(ConnError(code, why)),
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), ConnError> {
        if let Frame::Headers {
            stream,
            block,
            end_stream,
            ..
        } = f
        {
            return self.on_headers(stream, block, end_stream);
        }
        // One lock per frame: the idle-stream checks and the frame's effect.
        let mut inner = self.core.shared.lock();
        let last = inner.last_opened();
        match f {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => inner.on_data(stream, data, end_stream, flow_len, last),
            Frame::RstStream { stream, code } => {
                if stream > last {
                    return Err(ConnError(
                        ErrorCode::PROTOCOL_ERROR,
                        "RST_STREAM on an idle stream",
                    ));
                }
                inner.on_reset(stream, code);
                Ok(())
            }
            Frame::PushPromise { .. } => Err(ConnError(
                ErrorCode::PROTOCOL_ERROR,
                "PUSH_PROMISE with push disabled",
            )),
            Frame::GoAway {
                last_stream, code, ..
            } => {
                if code != ErrorCode::NO_ERROR {
                    tracing::debug!("upstream h2 server sent GOAWAY {code:?}");
                }
                inner.on_goaway(last_stream);
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                if stream > last {
                    return Err(ConnError(
                        ErrorCode::PROTOCOL_ERROR,
                        "WINDOW_UPDATE on an idle stream",
                    ));
                }
                inner.on_window_update(stream, increment)
            }
            _ => Ok(()),
        }
    }

    fn on_headers(&mut self, id: u32, block: Bytes, end: bool) -> Result<(), ConnError> {
        // One lock for the stream's state, the block's decoding (a microsecond or so) and its
        // effect.
        let mut inner = self.core.shared.lock();
        let (last, awaits) = (inner.last_opened(), inner.awaits_head(id));
        if id.is_multiple_of(2) || id > last {
            return Err(ConnError(
                ErrorCode::PROTOCOL_ERROR,
                "HEADERS on a stream this client did not open",
            ));
        }
        let kind = match awaits {
            Some(true) => Kind::Response,
            _ => Kind::Trailers,
        };
        let mut head = Head::with_capacity(if kind == Kind::Response { 8 } else { 0 });
        match self
            .core
            .decoder
            .decode(&block, self.max_header_list, |f, known| {
                head.field(f, known, kind)
            }) {
            Ok(()) => {}
            Err(DecodeError::ListTooLarge(_)) => {
                inner.reset(id, ErrorCode::PROTOCOL_ERROR);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!("upstream h2 header block: {e}");
                return Err(ConnError(
                    ErrorCode::COMPRESSION_ERROR,
                    "header block cannot be decoded",
                ));
            }
        }
        match awaits {
            // A stream closed or reset already: the block only kept HPACK in step.
            None => Ok(()),
            Some(true) => {
                match head.into_response() {
                    Ok((status, _)) if status.is_informational() => {
                        // Interim responses (100, 103) are not passed on; one that ends the
                        // stream, or a 101, breaks the protocol.
                        if end || status == http::StatusCode::SWITCHING_PROTOCOLS {
                            inner.reset(id, ErrorCode::PROTOCOL_ERROR);
                        }
                    }
                    Ok((status, headers)) => inner.on_response_head(id, status, headers, end),
                    Err(why) => {
                        tracing::debug!("upstream h2 stream {id}: malformed response: {why}");
                        inner.reset(id, ErrorCode::PROTOCOL_ERROR);
                    }
                }
                Ok(())
            }
            Some(false) => {
                match head.into_trailers() {
                    Ok(t) if end => inner.on_trailers(id, t),
                    _ => inner.reset(id, ErrorCode::PROTOCOL_ERROR),
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pool asks `is_closed` before every request: a GOAWAY must make it true at once, while
    /// the socket is still open.
    #[tokio::test]
    async fn a_goaway_closes_the_connection_to_new_streams() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut preface = [0u8; 24];
            s.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface, PREFACE);
            let mut out = BytesMut::new();
            frame::write_settings(&mut out, &Settings::default());
            s.write_all(&out).await.unwrap();
            let _ = gone.await;
            out.clear();
            frame::write_goaway(&mut out, 1, ErrorCode::NO_ERROR, b"");
            s.write_all(&out).await.unwrap();
            // Held open: only the GOAWAY says no.
            let mut sink = [0u8; 1024];
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, driver) = start(
            io,
            Config {
                initial_stream_window: 65_535,
                initial_connection_window: 65_535,
                max_header_list: 16 * 1024,
                keepalive: None,
            },
        );
        let driver = tokio::spawn(driver);
        // A stream in flight, which the GOAWAY lets finish: the connection stays up for it.
        let (head, ()) = http::Request::get("http://svc.internal/")
            .body(())
            .unwrap()
            .into_parts();
        let (_, in_flight) = conn.open(&head, true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.is_closed(), "open before the GOAWAY");
        go.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while !conn.is_closed() {
            assert!(t0.elapsed() < Duration::from_secs(5), "GOAWAY not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop((conn, in_flight));
        driver.abort();
        server.abort();
    }
}
