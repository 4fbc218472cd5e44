//! The relay client in the browser (pages, workers, service workers): the
//! global scope's `WebSocket`.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use super::{Connector, Link, Outgoing, Rendezvous, TransportEvent};
use crate::platform::BoxFuture;
use crate::sync::relay_frame::{ClientFrame, RelayFrame, RELAY_VERSION};

/// Connects to a relay at a `ws://` or `wss://` URL.
#[derive(Debug, Clone)]
pub struct RelayConnector {
    url: String,
}

/// The socket and its event handlers, kept alive together. Dropping it
/// (a failed or abandoned connection attempt, or the end of a session)
/// detaches the handlers before they are freed, so the events of a closing
/// socket never reach dropped closures, and closes the socket.
struct OpenSocket {
    socket: WebSocket,
    _open: Closure<dyn FnMut()>,
    _message: Closure<dyn FnMut(MessageEvent)>,
    _close: Closure<dyn FnMut(CloseEvent)>,
    _error: Closure<dyn FnMut()>,
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
        let _ = self.socket.close();
    }
}

impl RelayConnector {
    /// A connector for the relay at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    async fn open(&self, rendezvous: Rendezvous, cursor: u64) -> Result<Link, String> {
        let socket = WebSocket::new(&self.url)
            .map_err(|e| format!("cannot open a WebSocket to {}: {e:?}", self.url))?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let (events, inbound) = mpsc::unbounded();
        let (opened, opened_receiver) = oneshot::channel::<Result<(), String>>();
        let opened = Rc::new(RefCell::new(Some(opened)));

        let on_open = {
            let opened = opened.clone();
            Closure::<dyn FnMut()>::new(move || {
                if let Some(sender) = opened.borrow_mut().take() {
                    let _ = sender.send(Ok(()));
                }
            })
        };
        let on_error = {
            let opened = opened.clone();
            let url = self.url.clone();
            Closure::<dyn FnMut()>::new(move || {
                if let Some(sender) = opened.borrow_mut().take() {
                    let _ = sender.send(Err(format!("cannot connect to {url}")));
                }
            })
        };
        let on_message = {
            let events = events.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |message: MessageEvent| {
                let Ok(buffer) = message.data().dyn_into::<ArrayBuffer>() else {
                    return;
                };
                let bytes = Uint8Array::new(&buffer).to_vec();
                let event = match RelayFrame::decode(&bytes) {
                    Ok(RelayFrame::Welcome { members, .. }) => TransportEvent::Welcome { members },
                    Ok(RelayFrame::Frame {
                        sequence,
                        from,
                        envelope,
                    }) => TransportEvent::Envelope {
                        envelope,
                        cursor: (sequence != 0).then_some(sequence),
                        from,
                    },
                    Ok(RelayFrame::Stored { sequence, backlog }) => TransportEvent::Stored {
                        sequence,
                        cursor: backlog,
                    },
                    Ok(RelayFrame::Members {
                        members,
                        joined,
                        connection,
                    }) => TransportEvent::Member {
                        joined,
                        connection,
                        members,
                    },
                    Ok(RelayFrame::Error { code, message }) => TransportEvent::Closed {
                        reason: format!("the relay refused: {message} (code {code})"),
                    },
                    Err(e) => TransportEvent::Closed {
                        reason: format!("malformed relay frame: {e}"),
                    },
                };
                let _ = events.unbounded_send(event);
            })
        };
        let on_close = {
            let events = events.clone();
            let opened = opened.clone();
            Closure::<dyn FnMut(CloseEvent)>::new(move |close: CloseEvent| {
                if let Some(sender) = opened.borrow_mut().take() {
                    let _ = sender.send(Err(format!(
                        "the relay closed the connection ({})",
                        close.code()
                    )));
                }
                let _ = events.unbounded_send(TransportEvent::Closed {
                    reason: format!("the connection closed (code {})", close.code()),
                });
            })
        };
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let guard = OpenSocket {
            socket,
            _open: on_open,
            _message: on_message,
            _close: on_close,
            _error: on_error,
        };

        opened_receiver
            .await
            .map_err(|_| "the connection attempt was abandoned".to_string())??;
        let join = ClientFrame::Join {
            version: RELAY_VERSION,
            join_key: rendezvous.join_key,
            since: cursor,
        };
        guard
            .socket
            .send_with_u8_array(&join.encode())
            .map_err(|e| format!("cannot join: {e:?}"))?;

        let (outbound, mut to_send) = mpsc::unbounded::<Outgoing>();
        // The writer owns the socket and its handlers: when the engine drops
        // the link, the socket closes.
        wasm_bindgen_futures::spawn_local(async move {
            let mut sequence = 0u32;
            while let Some(Outgoing { envelope, keep }) = to_send.next().await {
                let frame = ClientFrame::Publish {
                    sequence,
                    keep,
                    envelope,
                };
                sequence = sequence.wrapping_add(1);
                if guard.socket.send_with_u8_array(&frame.encode()).is_err() {
                    break;
                }
            }
            drop(guard);
        });
        Ok(Link { outbound, inbound })
    }
}

impl Connector for RelayConnector {
    fn connect(&self, rendezvous: Rendezvous, cursor: u64) -> BoxFuture<'_, Result<Link, String>> {
        Box::pin(self.open(rendezvous, cursor))
    }

    fn describe(&self) -> String {
        format!("relay {}", self.url)
    }
}
