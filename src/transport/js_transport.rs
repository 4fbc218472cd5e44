//! Sync over a transport written in JavaScript (wasm32): a [`Connector`]
//! around a JS object, so the npm package can sync over anything Node or
//! the browser can reach (the shipped `pluresdb/hyperswarm` adapter
//! carries envelopes over npm `hyperswarm`).
//!
//! The JS side implements `SyncTransport` (declared in `src/wasm/types.rs`):
//!
//! ```text
//! connect(topic: Uint8Array, events) -> Promise<{ send(envelope, keep), close() }>
//! events.envelope(bytes: Uint8Array, from: number)
//! events.member(joined: boolean, connection: number, members: number)
//! events.closed(reason: string)
//! ```
//!
//! Like the Hyperswarm connector, such a transport has no backlog: an
//! envelope counts as stored once `send` returned, and replicas that were
//! offline catch up through the hello/delta exchange when they connect.
//! The transport must give every newly connected peer the session's first
//! envelope (its hello) and must not forward envelopes between peers. It
//! may report members before `connect` resolves (a peer that connects while
//! the topic is being announced); they count from the session's start.

use std::cell::Cell;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{Connector, Link, Outgoing, Rendezvous, TransportEvent};
use crate::platform::BoxFuture;
use crate::sync::Topic;

/// A [`Connector`] around a JS `SyncTransport` object.
#[derive(Debug, Clone)]
pub struct JsConnector {
    transport: JsValue,
    connect: Function,
    name: String,
}

fn method(object: &JsValue, name: &str) -> Option<Function> {
    Reflect::get(object, &name.into())
        .ok()
        .and_then(|value| value.dyn_into::<Function>().ok())
}

fn describe_error(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| format!("{error:?}"))
}

/// The callbacks handed to `connect`. JavaScript owns them (they are freed
/// with the object the transport holds), so a transport that reports
/// something after its session ended calls a function that does nothing,
/// instead of one whose Rust side was dropped (which throws "closure invoked
/// recursively or after being dropped" into the transport's own code).
struct EventHandlers {
    object: Object,
}

/// A connection number from JS: a non-negative safe integer, else 0.
fn connection_number(value: &JsValue) -> u64 {
    value
        .as_f64()
        .filter(|n| n.is_finite() && *n >= 0.0 && n.fract() == 0.0 && *n <= 9_007_199_254_740_991.0)
        .map_or(0, |n| n as u64)
}

impl EventHandlers {
    fn new(events: mpsc::UnboundedSender<TransportEvent>, ended: Rc<Cell<bool>>) -> Self {
        let envelope = {
            let (events, ended) = (events.clone(), ended.clone());
            Closure::<dyn FnMut(JsValue, JsValue)>::new(move |bytes: JsValue, from: JsValue| {
                if ended.get() {
                    return;
                }
                let Some(bytes) = bytes.dyn_ref::<Uint8Array>() else {
                    tracing::warn!(
                        "sync transport: an envelope that is not a Uint8Array was ignored"
                    );
                    return;
                };
                let _ = events.unbounded_send(TransportEvent::Envelope {
                    envelope: bytes.to_vec(),
                    cursor: None,
                    from: connection_number(&from),
                });
            })
        };
        let member = {
            let (events, ended) = (events.clone(), ended.clone());
            Closure::<dyn FnMut(JsValue, JsValue, JsValue)>::new(
                move |joined: JsValue, connection: JsValue, members: JsValue| {
                    if ended.get() {
                        return;
                    }
                    let _ = events.unbounded_send(TransportEvent::Member {
                        joined: joined.is_truthy(),
                        connection: connection_number(&connection),
                        members: connection_number(&members).min(u64::from(u32::MAX)) as u32,
                    });
                },
            )
        };
        let closed = Closure::<dyn FnMut(JsValue)>::new(move |reason: JsValue| {
            if ended.replace(true) {
                return;
            }
            let reason = reason
                .as_string()
                .unwrap_or_else(|| "the transport closed".into());
            let _ = events.unbounded_send(TransportEvent::Closed { reason });
        });
        let object = Object::new();
        let _ = Reflect::set(&object, &"envelope".into(), &envelope.into_js_value());
        let _ = Reflect::set(&object, &"member".into(), &member.into_js_value());
        let _ = Reflect::set(&object, &"closed".into(), &closed.into_js_value());
        Self { object }
    }
}

impl JsConnector {
    /// Wraps `transport`, which must have a `connect` method; its optional
    /// `name` string names it in the sync status.
    pub fn new(transport: JsValue) -> Result<Self, String> {
        let connect = method(&transport, "connect").ok_or_else(|| {
            "a sync transport must be a relay URL or an object with a connect(topic, events) method"
                .to_owned()
        })?;
        let name = Reflect::get(&transport, &"name".into())
            .ok()
            .and_then(|name| name.as_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "custom transport".into());
        Ok(Self {
            transport,
            connect,
            name,
        })
    }

    async fn open(&self, topic: Topic) -> Result<Link, String> {
        let (events, inbound) = mpsc::unbounded();
        let ended = Rc::new(Cell::new(false));
        let handlers = EventHandlers::new(events.clone(), ended.clone());
        // Queued before `connect` runs: the transport may report members
        // while `connect` is still pending (a peer that connects while the
        // topic is being announced), and the engine must see those after
        // the welcome, or the welcome's 0 would overwrite the count.
        let _ = events.unbounded_send(TransportEvent::Welcome { members: 0 });
        let topic_bytes = Uint8Array::from(&topic[..]);
        let returned = self
            .connect
            .call2(&self.transport, &topic_bytes, &handlers.object)
            .map_err(|e| format!("{}: connect failed: {}", self.name, describe_error(&e)))?;
        // The session runs in a task of its own from here on, so it ends
        // with `close()` whatever the engine does: the engine may give up
        // while `connect` is pending (`stopSync()`), dropping this future.
        let (outbound, mut to_send) = mpsc::unbounded::<Outgoing>();
        let (connected, started) = oneshot::channel::<Result<(), String>>();
        let name = self.name.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let link = match JsFuture::from(Promise::resolve(&returned)).await {
                Ok(link) => link,
                Err(error) => {
                    ended.set(true);
                    let _ = connected.send(Err(format!(
                        "{name}: connect failed: {}",
                        describe_error(&error)
                    )));
                    return;
                }
            };
            let close = method(&link, "close");
            let close_link = |ended: &Cell<bool>| {
                ended.set(true);
                if let Some(close) = &close {
                    if let Err(error) = close.call0(&link) {
                        tracing::warn!(error = %describe_error(&error), "sync transport: close failed");
                    }
                }
            };
            let Some(send) = method(&link, "send") else {
                close_link(&ended);
                let _ = connected.send(Err(format!(
                    "{name}: connect must resolve to an object with a send(envelope, keep) method"
                )));
                return;
            };
            if connected.send(Ok(())).is_err() {
                // Nobody waits for this session any more.
                close_link(&ended);
                return;
            }
            let mut sequence = 0u32;
            while let Some(Outgoing { envelope, keep }) = to_send.next().await {
                let bytes = Uint8Array::from(&envelope[..]);
                if let Err(error) = send.call2(&link, &bytes, &JsValue::from_bool(keep)) {
                    if !ended.replace(true) {
                        let _ = events.unbounded_send(TransportEvent::Closed {
                            reason: format!("{name}: send failed: {}", describe_error(&error)),
                        });
                    }
                    break;
                }
                if keep {
                    let _ = events.unbounded_send(TransportEvent::Stored {
                        sequence,
                        cursor: 0,
                    });
                }
                sequence = sequence.wrapping_add(1);
            }
            // The engine dropped the link (or sending failed): end the
            // session on the JS side too.
            close_link(&ended);
        });
        match started.await {
            Ok(Ok(())) => Ok(Link { outbound, inbound }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("{}: the session ended while connecting", self.name)),
        }
    }
}

impl Connector for JsConnector {
    fn connect(&self, rendezvous: Rendezvous, _cursor: u64) -> BoxFuture<'_, Result<Link, String>> {
        Box::pin(self.open(rendezvous.topic))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
