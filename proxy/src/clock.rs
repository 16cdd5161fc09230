//! The data path's clock: the monotonic time read at most once per poll of a connection's
//! task, the way Envoy's dispatcher keeps an approximate time per event-loop iteration.
//!
//! A request reads the time when it starts, when it is forwarded, when its response comes
//! back and when it ends, and sets its timers from it. Each read of the system clock costs
//! tens of nanoseconds (vDSO `clock_gettime`), and one poll of a connection's task often
//! serves several requests, so a connection's task runs inside [`Turned`]: the first
//! [`now`] in a poll reads the clock, the others in that poll get the same instant. Outside a
//! `Turned` task, `now` is `Instant::now()`.
//!
//! The error is bounded by the length of one poll (microseconds), far below the
//! millisecond resolution of the stats and headers that use it, and a deadline set from it
//! is early by at most as much.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Clone, Copy)]
enum State {
    /// Not inside a `Turned` poll: every read is fresh.
    Off,
    /// Inside one, nothing read yet.
    Unread,
    Read(Instant),
}

thread_local! {
    static TURN: Cell<State> = const { Cell::new(State::Off) };
}

/// The current monotonic time: this poll's instant inside a [`Turned`] task.
#[inline]
pub fn now() -> Instant {
    TURN.with(|t| match t.get() {
        State::Read(at) => at,
        State::Off => Instant::now(),
        State::Unread => {
            let at = Instant::now();
            t.set(State::Read(at));
            at
        }
    })
}

/// [`now`] as tokio's instant, for timers.
#[inline]
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(now())
}

pin_project_lite::pin_project! {
    /// A future whose every poll is one turn of the clock (see the module's documentation).
    pub struct Turned<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Turned<F> {
    pub fn new(inner: F) -> Turned<F> {
        Turned { inner }
    }
}

impl<F: Future> Future for Turned<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // A turn nested in another (a `Turned` future polled by a `Turned` task) starts
        // afresh and gives the outer one its state back.
        let outer = TURN.with(|t| t.replace(State::Unread));
        let r = self.project().inner.poll(cx);
        TURN.with(|t| t.set(outer));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    #[test]
    fn one_instant_per_turn_fresh_ones_outside() {
        let outside = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside, "outside a turn every read is fresh");
        let turns = std::cell::RefCell::new(Vec::new());
        let mut fut = std::pin::pin!(Turned::new(poll_fn(|cx| {
            let a = now();
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(now(), a, "a turn reads the clock once");
            turns.borrow_mut().push(a);
            if turns.borrow().len() < 2 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let after_first = now();
        assert!(
            after_first > turns.borrow()[0],
            "the turn's instant is not kept after it"
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert!(turns.borrow()[1] > after_first, "each turn reads anew");
    }

    #[test]
    fn a_nested_turn_gives_the_outer_one_back() {
        let fut = std::pin::pin!(Turned::new(async {
            let outer = now();
            std::thread::sleep(Duration::from_millis(2));
            let inner = Turned::new(async { now() }).await;
            assert!(inner > outer);
            assert_eq!(now(), outer);
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.poll(&mut cx).is_ready());
    }
}
