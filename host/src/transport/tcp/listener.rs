//! A `tcp://` or `durable://` listener: accepts connections up to the
//! configured limit, authenticates each before reading any frame, then
//! answers batches with acknowledgements (after the inbox commit for
//! `durable://`) and pings with pongs. Batches of one connection that
//! arrived together (a sender has several unanswered) are committed in one
//! transaction, up to `[tcp] batches_per_commit`, and then each is
//! acknowledged in order; the rows are claimed for this node as they are
//! written and handed to the worker (`[tcp] hand_to_worker`). A peer that breaks the protocol is told why and
//! disconnected; the other connections go on.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use super::TcpSettings;
use super::conn::{Conn, ConnError};
use crate::address::TcpEndpoint;
use crate::envelope::{CodecError, Envelope};
use crate::transport::receive::{Inbox, Keep};
use crate::transport::wire::{self, Frame, Verdict};

/// A listener bound to its address.
#[derive(Debug)]
pub(crate) struct BoundListener {
    /// The URI with the port actually bound (port 0 in the config picks one).
    pub uri: String,
    pub task: JoinHandle<()>,
}

/// Bind and start accepting.
pub(crate) async fn start(
    endpoint: &TcpEndpoint,
    settings: Arc<TcpSettings>,
    inbox: Inbox,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<BoundListener> {
    let listener = TcpListener::bind(&endpoint.addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", endpoint.peer_uri()),
        )
    })?;
    let local_addr = listener.local_addr()?;
    let uri = format!("{}://{local_addr}", endpoint.scheme());
    info!(listener = %uri, tls = settings.tls_acceptor.is_some(), secret = settings.secret.is_some(), "listening");
    let task = tokio::spawn(accept_loop(
        listener,
        uri.clone(),
        endpoint.durable,
        settings,
        inbox,
        shutdown,
    ));
    Ok(BoundListener { uri, task })
}

async fn accept_loop(
    listener: TcpListener,
    uri: String,
    durable: bool,
    settings: Arc<TcpSettings>,
    inbox: Inbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let uri: Arc<str> = uri.into();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                error!(listener = %uri, error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(listener = %uri, %peer, event = %"connection-limit", limit = settings.max_connections, "connection refused: the listener's connection limit is reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let span = info_span!("tcp_connection", listener = %uri, %peer);
        let (settings, inbox, shutdown, uri) = (
            settings.clone(),
            inbox.clone(),
            shutdown.clone(),
            uri.clone(),
        );
        tokio::spawn(
            async move {
                serve(stream, settings, inbox, durable, shutdown, &uri).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Why a connection ends after a group of batches.
enum GroupEnd {
    /// The inbox failed: the peer is told so.
    Refused(String),
    /// The acks could not be sent.
    Lost,
}

/// Store or queue a group of batches of one connection in one go, then
/// acknowledge each, in order.
async fn receive_group(
    conn: &mut Conn,
    inbox: &Inbox,
    keep: Keep,
    uri: &str,
    group: Vec<(u64, Vec<Result<Envelope, CodecError>>)>,
) -> Result<(), GroupEnd> {
    let size: usize = group.iter().map(|(_, e)| e.len()).sum();
    let span = info_span!("receive_batch", listener = %uri, size, batches = group.len(), ack = field::Empty);
    let mut answers = Vec::with_capacity(group.len());
    let mut entries = Vec::with_capacity(size);
    for (seq, e) in group {
        answers.push((seq, e.len()));
        entries.extend(e);
    }
    let verdicts = match inbox
        .receive_as(entries, keep)
        .instrument(span.clone())
        .await
    {
        Ok(v) => v,
        Err(e) => {
            span.record("ack", "none");
            error!(error = %crate::error_chain(&e), "a received batch could not be stored; no ack, the sender will send it again");
            return Err(GroupEnd::Refused(format!(
                "the receiver could not store the batch: {e}"
            )));
        }
    };
    let refused = verdicts.iter().filter(|v| **v != Verdict::Accepted).count();
    span.record(
        "ack",
        if refused == 0 {
            "received".to_string()
        } else {
            format!("received, {refused} refused")
        },
    );
    let mut acks = Vec::new();
    let mut rest = verdicts.as_slice();
    for (seq, n) in answers {
        let (mine, after) = rest.split_at(n.min(rest.len()));
        acks.extend_from_slice(&wire::encode_ack(seq, mine));
        rest = after;
    }
    if let Err(e) = conn.send(&acks).await {
        warn!(error = %crate::error_chain(&e), "sending an ack failed; closing");
        return Err(GroupEnd::Lost);
    }
    Ok(())
}

async fn serve(
    stream: tokio::net::TcpStream,
    settings: Arc<TcpSettings>,
    inbox: Inbox,
    durable: bool,
    mut shutdown: watch::Receiver<bool>,
    uri: &str,
) {
    let mut conn = match Conn::accept(stream, settings.clone()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(event = %"handshake-refused", cause = %e.cause(), error = %crate::error_chain(&e), "connection refused: the peer failed the handshake");
            return;
        }
    };
    debug!("peer authenticated");
    let keep = match (durable, settings.hand_to_worker) {
        (false, _) => Keep::Memory,
        (true, false) => Keep::Inbox,
        (true, true) => Keep::Handed,
    };
    // A frame read while a group of batches was gathered, handled next.
    let mut next = None;
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => tokio::select! {
                f = conn.recv(settings.idle_timeout) => f,
                _ = shutdown.changed() => {
                    conn.fail("the host is shutting down").await;
                    return;
                }
            },
        };
        match frame {
            Ok(None) => {
                debug!("peer closed the connection");
                return;
            }
            Ok(Some(Frame::Batch { seq, entries })) => {
                // The batches that arrived behind this one commit with it.
                let mut group = vec![(seq, entries)];
                while group.len() < settings.batches_per_commit {
                    match conn.recv_ready() {
                        Ok(Some(Frame::Batch { seq, entries })) => group.push((seq, entries)),
                        Ok(None) => break,
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                match receive_group(&mut conn, &inbox, keep, uri, group).await {
                    Ok(()) => {}
                    Err(GroupEnd::Refused(reason)) => {
                        conn.fail(&reason).await;
                        return;
                    }
                    Err(GroupEnd::Lost) => return,
                }
            }
            Ok(Some(Frame::Ping { seq })) => {
                if conn.send(&wire::encode_pong(seq)).await.is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Error { message })) => {
                info!(%message, "the peer ended the connection with an error");
                return;
            }
            Ok(Some(other)) => {
                let what = match other {
                    Frame::Ack { .. } => "ack",
                    _ => "pong",
                };
                warn!(
                    event = %"protocol-violation",
                    frame = %what,
                    "protocol violation: a listener receives batches and pings only; disconnecting"
                );
                conn.fail(&format!("unexpected {what} frame")).await;
                return;
            }
            Err(e) => {
                let reason = crate::error_chain(&e);
                match e {
                    ConnError::Io(_) | ConnError::Closed => {
                        info!(error = %reason, "connection lost");
                    }
                    _ => {
                        warn!(event = %"peer-disconnected", cause = %e.cause(), error = %reason, "disconnecting the peer");
                        conn.fail(&reason).await;
                    }
                }
                return;
            }
        }
    }
}
