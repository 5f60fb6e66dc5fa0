//! The TCP transport's side of the shared sending agent: a [`Connector`]
//! that opens an authenticated connection to one peer, and a [`Link`] that
//! sends batch frames and takes their acknowledgements in order, with up to
//! `[sending] batches_in_flight` of them unanswered at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::TcpSettings;
use super::conn::{Conn, ConnError};
use crate::address::TcpEndpoint;
use crate::transport::wire::{self, Frame, Verdict};
use crate::transport::{Connector, Link, LinkError, Outgoing};

/// Connects to one `tcp://` or `durable://` peer.
#[derive(Debug)]
pub(crate) struct TcpConnector {
    endpoint: TcpEndpoint,
    peer: String,
    settings: Arc<TcpSettings>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    window: usize,
}

impl TcpConnector {
    /// `window`: batches unanswered at once (1: one at a time).
    pub(crate) fn new(
        endpoint: TcpEndpoint,
        settings: Arc<TcpSettings>,
        connect_timeout: Duration,
        ack_timeout: Duration,
        window: usize,
    ) -> TcpConnector {
        TcpConnector {
            peer: endpoint.peer_uri(),
            endpoint,
            settings,
            connect_timeout,
            ack_timeout,
            window: window.max(1),
        }
    }
}

fn link_err(e: ConnError) -> LinkError {
    LinkError::from_error(&e)
}

#[async_trait]
impl Connector for TcpConnector {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn window(&self) -> usize {
        self.window
    }

    async fn connect(&self) -> Result<Box<dyn Link>, LinkError> {
        let conn = Conn::connect(
            &self.endpoint.addr,
            self.settings.clone(),
            self.connect_timeout,
        )
        .await
        .map_err(|e| LinkError(format!("{}: {}", self.peer, crate::error_chain(&e))))?;
        Ok(Box::new(TcpLink {
            conn,
            seq: 0,
            ack_timeout: self.ack_timeout,
            unanswered: VecDeque::new(),
        }))
    }
}

/// One connection. The listener answers in the order it was sent to, so
/// the answers are matched to `unanswered` front to back.
#[derive(Debug)]
pub(crate) struct TcpLink {
    conn: Conn,
    seq: u64,
    ack_timeout: Duration,
    /// Sequence numbers of the batches sent and not answered yet, oldest first.
    unanswered: VecDeque<u64>,
}

impl TcpLink {
    /// Wait for the answer to `seq`; anything else ends the connection.
    async fn answer(&mut self, seq: u64) -> Result<Frame, LinkError> {
        match self.conn.recv(self.ack_timeout).await.map_err(link_err)? {
            None => Err(LinkError(
                "the peer closed the connection before answering".into(),
            )),
            Some(Frame::Error { message }) => {
                Err(LinkError(format!("the peer reported: {message}")))
            }
            Some(f @ (Frame::Ack { seq: s, .. } | Frame::Pong { seq: s })) if s == seq => Ok(f),
            Some(other) => Err(LinkError(format!(
                "protocol violation: expected the answer to sequence number {seq}, got {}",
                describe(&other)
            ))),
        }
    }
}

fn describe(f: &Frame) -> String {
    match f {
        Frame::Batch { seq, .. } => format!("a batch ({seq})"),
        Frame::Ack { seq, .. } => format!("an ack of {seq}"),
        Frame::Ping { seq } => format!("a ping ({seq})"),
        Frame::Pong { seq } => format!("a pong of {seq}"),
        Frame::Error { message } => format!("an error ({message})"),
    }
}

#[async_trait]
impl Link for TcpLink {
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        self.start(batch).await?;
        self.finish().await
    }

    async fn start(&mut self, batch: &[Outgoing]) -> Result<(), LinkError> {
        self.seq += 1;
        let seq = self.seq;
        let bodies: Vec<&[u8]> = batch.iter().map(|o| o.body.as_slice()).collect();
        self.conn
            .send(&wire::encode_batch(seq, &bodies))
            .await
            .map_err(link_err)?;
        self.unanswered.push_back(seq);
        Ok(())
    }

    /// Cancel-safe: a frame is taken off the connection whole or not at all
    /// (`Conn::recv`), and the batch stays unanswered until its ack is read.
    async fn finish(&mut self) -> Result<Vec<Verdict>, LinkError> {
        let Some(&seq) = self.unanswered.front() else {
            return Err(LinkError("no batch is waiting for an answer".into()));
        };
        let answer = self.answer(seq).await?;
        self.unanswered.pop_front();
        match answer {
            Frame::Ack { verdicts, .. } => Ok(verdicts),
            other => Err(LinkError(format!(
                "expected an ack, got {}",
                describe(&other)
            ))),
        }
    }

    async fn ping(&mut self) -> Result<(), LinkError> {
        self.seq += 1;
        let seq = self.seq;
        self.conn
            .send(&wire::encode_ping(seq))
            .await
            .map_err(link_err)?;
        match self.answer(seq).await? {
            Frame::Pong { .. } => Ok(()),
            other => Err(LinkError(format!(
                "expected a pong, got {}",
                describe(&other)
            ))),
        }
    }
}
