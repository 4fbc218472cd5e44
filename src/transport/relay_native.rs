//! The relay client natively: `tokio-tungstenite`.

use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Connector, Link, Outgoing, Rendezvous, TransportEvent};
use crate::platform::BoxFuture;
use crate::sync::relay_frame::{ClientFrame, RelayFrame, RELAY_VERSION};

/// How long the relay may stay silent (it pings every 20 s) before the
/// connection counts as lost.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting and joining may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to a relay at a `ws://` or `wss://` URL.
#[derive(Debug, Clone)]
pub struct RelayConnector {
    url: String,
}

impl RelayConnector {
    /// A connector for the relay at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    async fn open(&self, rendezvous: Rendezvous, cursor: u64) -> Result<Link, String> {
        let (socket, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&self.url))
                .await
                .map_err(|_| format!("connecting to {} timed out", self.url))?
                .map_err(|e| format!("cannot connect to {}: {e}", self.url))?;
        let (mut sink, mut stream) = socket.split();
        let join = ClientFrame::Join {
            version: RELAY_VERSION,
            join_key: rendezvous.join_key,
            since: cursor,
        };
        sink.send(Message::Binary(join.encode().into()))
            .await
            .map_err(|e| format!("cannot join: {e}"))?;
        let (events, inbound) = mpsc::unbounded();
        let (outbound, mut to_send) = mpsc::unbounded::<Outgoing>();
        // The writer: publishes in order, numbered from 0.
        tokio::spawn(async move {
            let mut sequence = 0u32;
            while let Some(Outgoing { envelope, keep }) = to_send.next().await {
                let frame = ClientFrame::Publish {
                    sequence,
                    keep,
                    envelope,
                };
                sequence = sequence.wrapping_add(1);
                if sink
                    .send(Message::Binary(frame.encode().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        // The reader: relay frames to events; pongs are answered by
        // tungstenite while reading.
        tokio::spawn(async move {
            let reason = loop {
                let next = tokio::time::timeout(READ_TIMEOUT, stream.next()).await;
                let message = match next {
                    Err(_) => break "the relay went silent".to_string(),
                    Ok(None) => break "the relay closed the connection".to_string(),
                    Ok(Some(Err(e))) => break format!("connection error: {e}"),
                    Ok(Some(Ok(message))) => message,
                };
                let bytes = match message {
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break "the relay closed the connection".to_string(),
                    _ => continue,
                };
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
                    Ok(RelayFrame::Error { code, message }) => {
                        break format!("the relay refused: {message} (code {code})")
                    }
                    Err(e) => break format!("malformed relay frame: {e}"),
                };
                if events.unbounded_send(event).is_err() {
                    return;
                }
            };
            let _ = events.unbounded_send(TransportEvent::Closed { reason });
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
