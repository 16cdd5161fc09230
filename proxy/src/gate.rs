//! A future that is polled only once its own waker has fired: for what a connection's task
//! watches beside its traffic (its idle timer, the listener's drain phase), which is rarely
//! ready but would otherwise be polled on every wake-up of the task.
//!
//! Polling a tokio timer or a `watch` channel takes several atomic read-modify-write
//! operations (registering the waker, locking the waiter list), each about 20 cycles; a
//! connection's task wakes two or more times per request. A quiet [`Gated`] poll is a plain
//! load and a waker compare. The inner future gets a waker of the gate's own, which marks the
//! gate and wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

struct Gate {
    woken: AtomicBool,
    /// The task to wake when the inner future's waker fires.
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// See the module's documentation.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
        // The gate's waker, made once, lent to every poll of `inner`.
        waker: Waker,
        // The task waker the gate holds, to notice a different one.
        task: Option<Waker>,
    }
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Gated<F> {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Gated {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
            task: None,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            // First poll, or polled from another task: wake that one from now on, and poll
            // the inner future once in case it was woken in between.
            *this.gate.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            *this.task = Some(cx.waker().clone());
            this.gate.woken.store(true, Ordering::Relaxed);
        }
        if !this.gate.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a wake during it is seen on the next one.
        this.gate.woken.store(false, Ordering::Relaxed);
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set, waking whatever it last saw when `kick`ed.
    struct Probe {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn polled_only_after_its_waker_fires() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let mut fut = std::pin::pin!(Gated::new(Probe {
            polls: polls.clone(),
            open: open.clone(),
            waker: inner_waker.clone(),
        }));
        let task = Arc::new(CountWakes(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        for _ in 0..5 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "quiet polls do not reach the inner future"
        );
        // The inner future's waker fires: the task is woken and the next poll goes through.
        open.store(true, Ordering::Relaxed);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_new_task_gets_one_poll_and_the_wakes() {
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let mut fut = std::pin::pin!(Gated::new(Probe {
            polls: polls.clone(),
            open: Arc::new(AtomicBool::new(false)),
            waker: inner_waker.clone(),
        }));
        let first = Arc::new(CountWakes(AtomicUsize::new(0)));
        let second = Arc::new(CountWakes(AtomicUsize::new(0)));
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&w2))
            .is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_gated_timer_fires() {
        let t0 = std::time::Instant::now();
        Gated::new(tokio::time::sleep(std::time::Duration::from_millis(30))).await;
        assert!(t0.elapsed() >= std::time::Duration::from_millis(30));
    }
}
