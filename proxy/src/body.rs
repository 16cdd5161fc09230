//! The one HTTP body type that flows through the proxy: a boxed stream of `Bytes` frames, so
//! downstream bodies stream to upstreams (and back) without buffering.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Errors inside a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

/// A body with the given bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that fails if no frame arrives for `idle` (the stream idle timeout); the
    /// downstream stream is then reset, as Envoy does. The timer is made only when the body
    /// first has to wait, so a body that is ready when polled costs none.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // `None`: a fixed deadline (the stream's max duration), not pushed back by frames.
        idle: Option<std::time::Duration>,
        // When it fails (for `idle`: set when the body first waits, no clock read for a body
        // that never does).
        deadline: Option<tokio::time::Instant>,
        // Frames came since the timer was last set.
        moved: bool,
        sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            idle: Some(idle),
            deadline: None,
            moved: true,
            sleep: None,
        }
    }

    /// A body that fails at `deadline` whatever its activity (Envoy's max stream duration).
    pub fn deadline(inner: B, deadline: tokio::time::Instant) -> Self {
        IdleTimeout {
            inner,
            idle: None,
            deadline: Some(deadline),
            moved: false,
            sleep: None,
        }
    }
}

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct IdleTimedOut;

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(f) => {
                *this.moved = true;
                Poll::Ready(f)
            }
            Poll::Pending => {
                if *this.moved {
                    *this.moved = false;
                    if let Some(idle) = this.idle {
                        let at = tokio::time::Instant::now() + *idle;
                        *this.deadline = Some(at);
                        if let Some(s) = this.sleep.as_mut() {
                            s.as_mut().reset(at);
                        }
                    }
                }
                let deadline = this.deadline.unwrap_or_else(tokio::time::Instant::now);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match std::future::Future::poll(sleep.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A body that raises a flag once it has ended (the whole request was received).
    pub struct EndFlag {
        #[pin]
        inner: Body,
        ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
}

impl EndFlag {
    /// Wraps a request's body; the flag rises when it ends.
    pub fn wrap(
        req: http::Request<Body>,
    ) -> (
        http::Request<Body>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        (
            req.map(|inner| boxed(EndFlag { inner, ended: flag })),
            ended,
        )
    }
}

impl http_body::Body for EndFlag {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        if matches!(r, std::task::Poll::Ready(None)) || this.inner.is_end_stream() {
            this.ended.store(true, std::sync::atomic::Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
