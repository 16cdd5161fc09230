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
    /// A body that fails if no frame arrives for `idle` (a route's `idle_timeout`); the
    /// downstream stream is then reset, as Envoy does.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // `None`: a fixed deadline (the stream's max duration), not pushed back by frames.
        idle: Option<std::time::Duration>,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            idle: Some(idle),
            sleep: tokio::time::sleep(idle),
        }
    }

    /// A body that fails at `deadline` whatever its activity (Envoy's max stream duration).
    pub fn deadline(inner: B, deadline: tokio::time::Instant) -> Self {
        IdleTimeout {
            inner,
            idle: None,
            sleep: tokio::time::sleep_until(deadline),
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
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(f) => {
                if let Some(idle) = this.idle {
                    let deadline = tokio::time::Instant::now() + *idle;
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(f)
            }
            Poll::Pending => match std::future::Future::poll(this.sleep, cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimedOut)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
