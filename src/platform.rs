//! Platform shims: the only place where the browser (wasm32) and native
//! targets differ for time, randomness, task spawning and `Send` bounds.
//!
//! Everything above this module is written once. Native code runs on tokio and
//! is `Send`; wasm32 is single-threaded, so futures there need not be `Send`
//! and `MaybeSend` erases that bound.

use std::future::Future;

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::future::Future;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// `Send` natively; nothing on wasm32 (single-threaded).
    pub trait MaybeSend: Send {}
    impl<T: Send + ?Sized> MaybeSend for T {}

    /// `Sync` natively; nothing on wasm32 (single-threaded).
    pub trait MaybeSync: Sync {}
    impl<T: Sync + ?Sized> MaybeSync for T {}

    /// A boxed future that is `Send` natively.
    pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

    /// A boxed iterator that is `Send` natively.
    pub type BoxIterator<T> = Box<dyn Iterator<Item = T> + Send>;

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
        tokio::spawn(future);
    }

    /// Waits for `duration`.
    pub async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::future::Future;
    use std::time::Duration;

    /// `Send` natively; nothing on wasm32 (single-threaded).
    pub trait MaybeSend {}
    impl<T: ?Sized> MaybeSend for T {}

    /// `Sync` natively; nothing on wasm32 (single-threaded).
    pub trait MaybeSync {}
    impl<T: ?Sized> MaybeSync for T {}

    /// A boxed future that is `Send` natively.
    pub type BoxFuture<'a, T> = futures::future::LocalBoxFuture<'a, T>;

    /// A boxed iterator that is `Send` natively.
    pub type BoxIterator<T> = Box<dyn Iterator<Item = T>>;

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        js_sys::Date::now() as u64
    }

    pub fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        wasm_bindgen_futures::spawn_local(future);
    }

    /// Waits for `duration`.
    pub async fn sleep(duration: Duration) {
        let millis = duration.as_millis().min(i32::MAX as u128) as i32;
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let global = js_sys::global();
            let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
                .ok()
                .and_then(|f| wasm_bindgen::JsCast::dyn_into::<js_sys::Function>(f).ok());
            if let Some(set_timeout) = set_timeout {
                let _ = set_timeout.call2(&global, &resolve, &millis.into());
            } else {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }

    /// Lets other tasks run, through a message posted to a `MessageChannel`
    /// (a timer of 0 ms is clamped to 4 ms once nested, and browsers hold
    /// timers of hidden pages back for a second or more); a timer where
    /// there is no `MessageChannel`.
    pub async fn yield_to_tasks() {
        use wasm_bindgen::JsCast;
        let global = js_sys::global();
        let channel = js_sys::Reflect::get(&global, &"MessageChannel".into())
            .ok()
            .and_then(|constructor| constructor.dyn_into::<js_sys::Function>().ok())
            .and_then(|constructor| {
                js_sys::Reflect::construct(&constructor, &js_sys::Array::new()).ok()
            });
        let port = |channel: &wasm_bindgen::JsValue, name: &str| {
            js_sys::Reflect::get(channel, &name.into()).unwrap_or_default()
        };
        let method = |target: &wasm_bindgen::JsValue, name: &str| {
            js_sys::Reflect::get(target, &name.into())
                .ok()
                .and_then(|method| method.dyn_into::<js_sys::Function>().ok())
        };
        let Some(channel) = channel else {
            return sleep(Duration::ZERO).await;
        };
        let (receiving, sending) = (port(&channel, "port1"), port(&channel, "port2"));
        let Some(post) = method(&sending, "postMessage") else {
            return sleep(Duration::ZERO).await;
        };
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let _ = js_sys::Reflect::set(&receiving, &"onmessage".into(), &resolve);
            // No message, no wake-up: go on at once rather than wait for good.
            if post.call1(&sending, &wasm_bindgen::JsValue::NULL).is_err() {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        for port in [&receiving, &sending] {
            if let Some(close) = method(port, "close") {
                let _ = close.call0(port);
            }
        }
    }
}

pub use imp::{now_ms, sleep, BoxFuture, BoxIterator, MaybeSend, MaybeSync};

/// Runs `future` in the background on the current executor (tokio natively,
/// the browser's microtask queue on wasm32).
pub fn spawn<F>(future: F)
where
    F: Future<Output = ()> + MaybeSend + 'static,
{
    imp::spawn(future);
}

/// Runs CPU-heavy `work` without holding up the async executor: on tokio's
/// blocking pool natively; inline on wasm32 (there is no other thread to
/// use — run the database in a Worker to keep pages responsive).
pub async fn run_blocking<T, F>(work: F) -> T
where
    T: MaybeSend + 'static,
    F: FnOnce() -> T + MaybeSend + 'static,
{
    #[cfg(not(target_arch = "wasm32"))]
    {
        tokio::task::spawn_blocking(work)
            .await
            .expect("blocking work panicked")
    }
    #[cfg(target_arch = "wasm32")]
    {
        // Let pending promise reactions (the commit's callers) run first.
        sleep(std::time::Duration::ZERO).await;
        work()
    }
}

/// Lets other work run before continuing: the callers whose promises just
/// resolved (wasm32: a macrotask, after every pending promise reaction;
/// natively: one turn of the tokio scheduler).
pub async fn yield_to_callers() {
    #[cfg(not(target_arch = "wasm32"))]
    tokio::task::yield_now().await;
    #[cfg(target_arch = "wasm32")]
    sleep(std::time::Duration::ZERO).await;
}

/// Lets the other tasks of the event loop run before continuing (wasm32:
/// input, rendering, storage callbacks, without the clamping and
/// throttling of timers; natively: one turn of the tokio scheduler).
pub async fn yield_to_tasks() {
    #[cfg(not(target_arch = "wasm32"))]
    tokio::task::yield_now().await;
    #[cfg(target_arch = "wasm32")]
    imp::yield_to_tasks().await;
}

/// Fills `buf` with cryptographically secure random bytes.
///
/// # Panics
/// Only when the platform has no entropy source at all (never in a browser,
/// Node or a normal OS), which no caller could recover from.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the platform has no secure random source");
}

/// Wall-clock time source, injected into the pure layers so tests can skew it.
pub trait WallClock: MaybeSend + MaybeSync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The platform's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}
