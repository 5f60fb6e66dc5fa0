//! The sending agent under paused time: a scripted fake peer (the transport
//! is what is under test) and the real SQLite store. Every time asserted is
//! exact: store calls take no paused time (see `crate::paused`), so the
//! only things that move the clock are the agent's own timers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::Agent;
use crate::config::SendingConfig;
use crate::envelope::Envelope;
use crate::paused::{self, Frozen};
use crate::store::{Admin, CommitBatch, DeadLetters, GroupCommit, Nodes, Outbox};
use crate::transport::{Connector, Link, LinkError, Outgoing, Verdict};

/// What the fake peer was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Connect,
    /// A batch (its ids in order) and whether it was answered (a failed or
    /// a hanging send is not).
    Send {
        ids: Vec<Uuid>,
        ok: bool,
    },
    Ping {
        ok: bool,
    },
    /// A batch sent without waiting for its answer (a link with a window);
    /// its answer is reported as a `Send` when the agent takes it.
    Start {
        ids: Vec<Uuid>,
    },
}

/// How the fake peer answers the next batch.
#[derive(Debug, Clone)]
enum Reply {
    /// Every envelope accepted.
    Accept,
    /// These verdicts, in order.
    Verdicts(Vec<Verdict>),
    /// The send fails (a broken connection).
    Fail,
    /// No answer, ever.
    Hang,
}

#[derive(Debug, Default)]
struct Script {
    /// While down, every send and ping fails (connecting still works).
    down: bool,
    /// Answers to the next batches; `Accept` once they run out.
    replies: VecDeque<Reply>,
}

/// A peer the test scripts; each call is reported on `calls` with the
/// paused time it was made at.
#[derive(Debug, Clone)]
struct FakePeer {
    script: Arc<Mutex<Script>>,
    calls: mpsc::UnboundedSender<(Instant, Call)>,
    /// Batches a link may have unanswered (1: `send` only).
    window: usize,
}

impl FakePeer {
    fn report(&self, call: Call) {
        let _ = self.calls.send((Instant::now(), call));
    }

    fn set_down(&self, down: bool) {
        self.script.lock().unwrap().down = down;
    }

    fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().replies.extend(replies);
    }
}

#[async_trait]
impl Connector for FakePeer {
    fn peer(&self) -> &str {
        "tcp://fake-peer:1"
    }

    async fn connect(&self) -> Result<Box<dyn Link>, LinkError> {
        self.report(Call::Connect);
        Ok(Box::new(FakeLink {
            peer: self.clone(),
            unanswered: VecDeque::new(),
        }))
    }

    fn window(&self) -> usize {
        self.window
    }
}

struct FakeLink {
    peer: FakePeer,
    /// Batches started and not answered yet, oldest first.
    unanswered: VecDeque<Vec<Outgoing>>,
}

impl FakeLink {
    /// The scripted answer to `batch`, reported as a `Send`.
    async fn answer(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        let ids: Vec<Uuid> = batch.iter().map(|o| o.id).collect();
        let reply = {
            let mut s = self.peer.script.lock().unwrap();
            if s.down {
                Reply::Fail
            } else {
                s.replies.pop_front().unwrap_or(Reply::Accept)
            }
        };
        let ok = matches!(reply, Reply::Accept | Reply::Verdicts(_));
        self.peer.report(Call::Send { ids, ok });
        match reply {
            Reply::Accept => Ok(vec![Verdict::Accepted; batch.len()]),
            Reply::Verdicts(v) => Ok(v),
            Reply::Fail => Err(LinkError("connection reset by fake peer".into())),
            Reply::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Link for FakeLink {
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        self.answer(batch).await
    }

    async fn start(&mut self, batch: &[Outgoing]) -> Result<(), LinkError> {
        assert!(
            self.unanswered.len() < self.peer.window,
            "more batches unanswered than the window"
        );
        self.peer.report(Call::Start { ids: ids(batch) });
        self.unanswered.push_back(batch.to_vec());
        Ok(())
    }

    async fn finish(&mut self) -> Result<Vec<Verdict>, LinkError> {
        let batch = self
            .unanswered
            .front()
            .cloned()
            .expect("a batch awaits its answer");
        let answer = self.answer(&batch).await;
        self.unanswered.pop_front();
        answer
    }

    async fn ping(&mut self) -> Result<(), LinkError> {
        let ok = !self.peer.script.lock().unwrap().down;
        self.peer.report(Call::Ping { ok });
        if ok {
            Ok(())
        } else {
            Err(LinkError("fake peer does not answer".into()))
        }
    }
}

/// One agent running against a fake peer and a real store.
struct Rig {
    peer: FakePeer,
    calls: mpsc::UnboundedReceiver<(Instant, Call)>,
    tx: mpsc::UnboundedSender<Vec<Outgoing>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    store: Arc<Frozen>,
    /// The agent reports its circuit here.
    metrics: Arc<crate::admin::Metrics>,
    /// When the agent started; call times are offsets from it.
    t0: Instant,
    _dir: tempfile::TempDir,
}

/// Longest a test waits for the agent's next call, in paused time (far
/// beyond any timer the tests configure).
const CALL_DEADLINE: Duration = Duration::from_secs(600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Rig {
    async fn start(cfg: SendingConfig) -> Rig {
        Rig::start_with_window(cfg, 1).await
    }

    /// Against a peer whose links take up to `window` batches unanswered.
    async fn start_with_window(cfg: SendingConfig, window: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = paused::sqlite(dir.path()).await;
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let peer = FakePeer {
            script: Arc::default(),
            calls: calls_tx,
            window,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(crate::admin::Metrics::new());
        let agent =
            Agent::new(Arc::new(peer.clone()), store.clone(), cfg).with_metrics(metrics.clone());
        let task = tokio::spawn(agent.run(rx, shutdown_rx));
        Rig {
            peer,
            calls,
            tx,
            shutdown,
            task,
            store,
            metrics,
            t0: Instant::now(),
            _dir: dir,
        }
    }

    /// `circuit_open` of the fake peer as `/metrics` shows it.
    fn circuit_open(&self) -> Option<String> {
        let text = self.metrics.render(None);
        text.lines()
            .find_map(|l| l.strip_prefix(r#"jasper_circuit_open{peer="tcp://fake-peer:1"} "#))
            .map(str::to_owned)
    }

    /// The agent's next call to the peer and when (since start) it came.
    async fn next_call(&mut self) -> (Duration, Call) {
        let got = tokio::time::timeout(CALL_DEADLINE, self.calls.recv()).await;
        let (at, call) = got
            .expect("the agent made no further call to the peer")
            .expect("calls channel closed");
        (at - self.t0, call)
    }

    /// The next `n` calls.
    async fn calls(&mut self, n: usize) -> Vec<(Duration, Call)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_call().await);
        }
        out
    }

    /// Assert the peer hears nothing for `d` of paused time.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(got) = tokio::time::timeout(d, self.calls.recv()).await {
            panic!("expected no call to the peer, got {got:?}");
        }
    }

    fn queue(&self, items: &[Outgoing]) {
        self.tx.send(items.to_vec()).unwrap();
    }

    /// Give `items` outgoing rows, as a handler's commit would.
    async fn persist(&self, items: &[Outgoing]) {
        let commit = CommitBatch {
            outgoing: items.iter().map(|o| o.row(1)).collect(),
            ..CommitBatch::default()
        };
        self.store.commit(&commit).await.unwrap();
    }

    async fn outgoing_rows(&self) -> i64 {
        self.store.counts().await.unwrap().outgoing
    }

    /// Wait until the outgoing table holds `n` rows.
    async fn wait_outgoing_rows(&self, n: i64) {
        let store = self.store.clone();
        paused::wait_for(&format!("{n} outgoing rows"), ms(1000), move || {
            let store = store.clone();
            async move { (store.counts().await.unwrap().outgoing == n).then_some(()) }
        })
        .await;
    }
}

fn outgoing(durable: bool, deliver_by: Option<i64>) -> Outgoing {
    let mut env = Envelope::new("test.Thing", b"{}".to_vec());
    env.deliver_by = deliver_by;
    Outgoing::from_envelope(&env, durable)
}

fn volatile(n: usize) -> Vec<Outgoing> {
    (0..n).map(|_| outgoing(false, None)).collect()
}

fn ids(items: &[Outgoing]) -> Vec<Uuid> {
    items.iter().map(|o| o.id).collect()
}

fn sent(items: &[Outgoing]) -> Call {
    Call::Send {
        ids: ids(items),
        ok: true,
    }
}

fn failed(items: &[Outgoing]) -> Call {
    Call::Send {
        ids: ids(items),
        ok: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_is_not_full_leaves_when_its_window_closes() {
    let mut rig = Rig::start(SendingConfig {
        batch_size: 10,
        batch_window_ms: 50,
        ..SendingConfig::default()
    })
    .await;
    let items = volatile(5);
    rig.queue(&items[..3]);
    tokio::time::sleep(ms(20)).await;
    // Joins the batch still open.
    rig.queue(&items[3..]);
    assert_eq!(
        rig.calls(2).await,
        vec![(ms(50), Call::Connect), (ms(50), sent(&items))]
    );
    rig.quiet_for(ms(10_000)).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_leaves_at_once_and_the_rest_waits_for_the_window() {
    let mut rig = Rig::start(SendingConfig {
        batch_size: 10,
        batch_window_ms: 50,
        ..SendingConfig::default()
    })
    .await;
    let items = volatile(25);
    rig.queue(&items);
    assert_eq!(
        rig.calls(4).await,
        vec![
            (ms(0), Call::Connect),
            (ms(0), sent(&items[..10])),
            (ms(0), sent(&items[10..20])),
            (ms(50), sent(&items[20..])),
        ]
    );
    rig.quiet_for(ms(10_000)).await;
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_doubles_per_failure_up_to_five_seconds() {
    let mut rig = Rig::start(SendingConfig {
        batch_window_ms: 0,
        retry_delay_ms: 100,
        // Never opens here: this test is about the backoff alone.
        breaker_failures: 100,
        ..SendingConfig::default()
    })
    .await;
    rig.peer.reply(std::iter::repeat_n(Reply::Fail, 8));
    let items = volatile(1);
    rig.queue(&items);
    let mut sends = Vec::new();
    for _ in 0..9 {
        // A failed send drops the link: each try connects again first.
        let (at, call) = rig.next_call().await;
        assert_eq!(call, Call::Connect);
        let (at_send, send) = rig.next_call().await;
        assert_eq!(at_send, at);
        sends.push((at, send));
    }
    let times: Vec<u64> = sends.iter().map(|(at, _)| at.as_millis() as u64).collect();
    // Waits of 100, 200, 400, ... ms, capped at 5 s.
    assert_eq!(
        times,
        [0, 100, 300, 700, 1500, 3100, 6300, 11_300, 16_300],
        "sends at {times:?}"
    );
    for (_, call) in &sends[..8] {
        assert_eq!(call, &failed(&items));
    }
    assert_eq!(sends[8].1, sent(&items));
    rig.quiet_for(ms(60_000)).await;
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_breaker_failures_pings_and_closes_on_the_first_answer() {
    let mut rig = Rig::start(SendingConfig {
        batch_window_ms: 0,
        retry_delay_ms: 100,
        breaker_failures: 3,
        ping_interval_ms: 1000,
        ..SendingConfig::default()
    })
    .await;
    assert_eq!(rig.circuit_open().as_deref(), Some("0"), "closed at start");
    rig.peer.set_down(true);
    let first = volatile(1);
    rig.queue(&first);
    // Three failures in a row, 100 then 200 ms apart ...
    assert_eq!(
        rig.calls(6).await,
        vec![
            (ms(0), Call::Connect),
            (ms(0), failed(&first)),
            (ms(100), Call::Connect),
            (ms(100), failed(&first)),
            (ms(300), Call::Connect),
            (ms(300), failed(&first)),
        ]
    );
    // ... open the breaker: no more sends, a ping every second (not the
    // 400 ms a fourth backoff would have been).
    assert_eq!(
        rig.calls(4).await,
        vec![
            (ms(1300), Call::Connect),
            (ms(1300), Call::Ping { ok: false }),
            (ms(2300), Call::Connect),
            (ms(2300), Call::Ping { ok: false }),
        ]
    );
    assert_eq!(rig.circuit_open().as_deref(), Some("1"), "open in /metrics");
    // Queued while open: held with the first.
    let later = volatile(2);
    rig.queue(&later);
    rig.peer.set_down(false);
    let held: Vec<Outgoing> = first.iter().chain(&later).cloned().collect();
    // The first answered ping closes it; what it held goes out on that link.
    assert_eq!(
        rig.calls(3).await,
        vec![
            (ms(3300), Call::Connect),
            (ms(3300), Call::Ping { ok: true }),
            (ms(3300), sent(&held)),
        ]
    );
    assert_eq!(rig.circuit_open().as_deref(), Some("0"), "closed again");
    rig.quiet_for(ms(60_000)).await;
    // Closed again: a failure backs off (100 ms), it does not reopen at once.
    rig.peer.reply([Reply::Fail]);
    let next = volatile(1);
    rig.queue(&next);
    let t = Instant::now() - rig.t0;
    assert_eq!(
        rig.calls(3).await,
        vec![
            (t, failed(&next)),
            (t + ms(100), Call::Connect),
            (t + ms(100), sent(&next)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn envelopes_past_their_deliver_by_are_dropped_never_sent() {
    let mut rig = Rig::start(SendingConfig {
        batch_size: 10,
        batch_window_ms: 200,
        ..SendingConfig::default()
    })
    .await;
    let now = paused::now_ms();
    // Both expire while the batch window is open; only `live` is sent.
    let durable_expiring = outgoing(true, Some(now + 100));
    let volatile_expiring = outgoing(false, Some(now + 100));
    // The deadline itself is still in time.
    let live = outgoing(true, Some(now + 200));
    let items = [durable_expiring, volatile_expiring, live.clone()];
    rig.persist(&[items[0].clone(), live.clone()]).await;
    assert_eq!(rig.outgoing_rows().await, 2);
    rig.queue(&items);
    assert_eq!(
        rig.calls(2).await,
        vec![(ms(200), Call::Connect), (ms(200), sent(&[live]))]
    );
    // The expired envelope's row is deleted unsent, the sent one's once accepted.
    rig.wait_outgoing_rows(0).await;
    rig.quiet_for(ms(10_000)).await;
}

#[tokio::test(start_paused = true)]
async fn accepted_rows_are_deleted_and_refused_ones_dead_lettered_with_the_peers_reason() {
    let mut rig = Rig::start(SendingConfig {
        batch_window_ms: 0,
        ..SendingConfig::default()
    })
    .await;
    let [accepted, rejected, unknown, not_sent] = [(); 4].map(|()| outgoing(true, None));
    rig.persist(&[
        accepted.clone(),
        rejected.clone(),
        unknown.clone(),
        not_sent.clone(),
    ])
    .await;
    rig.peer.reply([Reply::Verdicts(vec![
        Verdict::Accepted,
        Verdict::Rejected("order o-1 is closed".into()),
        Verdict::UnknownDestination("no queue named billing".into()),
    ])]);
    let batch = [accepted, rejected.clone(), unknown.clone()];
    rig.queue(&batch);
    assert_eq!(
        rig.calls(2).await,
        vec![(ms(0), Call::Connect), (ms(0), sent(&batch))]
    );
    let store = rig.store.clone();
    let dead = paused::wait_for("two dead letters", ms(1000), move || {
        let store = store.clone();
        async move {
            let dead = store.dead_letters(10).await.unwrap();
            (dead.len() == 2).then_some(dead)
        }
    })
    .await;
    let reason = |id: Uuid| {
        let d = dead.iter().find(|d| d.id == id).expect("dead-lettered");
        (d.error_kind.as_str(), d.error_message.as_str())
    };
    assert_eq!(reason(rejected.id), ("rejected", "order o-1 is closed"));
    assert_eq!(
        reason(unknown.id),
        ("unknown-destination", "no queue named billing")
    );
    // Only the row of the envelope never sent is left.
    rig.wait_outgoing_rows(1).await;
    rig.quiet_for(ms(10_000)).await;
    rig.store.release_all().await.unwrap();
    let left: Vec<Uuid> = rig
        .store
        .claim_outgoing(2, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [not_sent.id]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_peer_that_hangs() {
    let mut rig = Rig::start(SendingConfig {
        batch_window_ms: 0,
        ..SendingConfig::default()
    })
    .await;
    rig.peer.reply([Reply::Hang]);
    let items = [outgoing(true, None)];
    rig.persist(&items).await;
    rig.queue(&items);
    // Sent, never answered.
    assert_eq!(rig.calls(2).await[1], (ms(0), failed(&items)));
    // Hung for a minute; then shutdown.
    rig.quiet_for(ms(60_000)).await;
    let asked = Instant::now();
    rig.shutdown.send(true).unwrap();
    tokio::time::timeout(ms(1), &mut rig.task)
        .await
        .expect("the agent stopped at once")
        .unwrap();
    assert_eq!(Instant::now(), asked, "no paused time passed");
    // Its row stays for the next run.
    assert_eq!(rig.outgoing_rows().await, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_an_open_breaker_at_once() {
    let mut rig = Rig::start(SendingConfig {
        batch_window_ms: 0,
        retry_delay_ms: 100,
        breaker_failures: 1,
        ping_interval_ms: 60_000,
        ..SendingConfig::default()
    })
    .await;
    rig.peer.set_down(true);
    rig.queue(&volatile(1));
    assert_eq!(rig.calls(2).await[1].0, ms(0));
    // Open, waiting a minute for its first ping.
    tokio::time::sleep(ms(1000)).await;
    let asked = Instant::now();
    rig.shutdown.send(true).unwrap();
    tokio::time::timeout(ms(1), &mut rig.task)
        .await
        .expect("the agent stopped at once")
        .unwrap();
    assert_eq!(Instant::now(), asked);
    let no_ping = rig.calls.try_recv();
    assert!(no_ping.is_err(), "no ping after shutdown: {no_ping:?}");
}

fn started(items: &[Outgoing]) -> Call {
    Call::Start { ids: ids(items) }
}

#[tokio::test(start_paused = true)]
async fn a_window_keeps_batches_unanswered_and_a_lost_peer_gets_every_unanswered_one_again() {
    let mut rig = Rig::start_with_window(
        SendingConfig {
            batch_size: 2,
            batch_window_ms: 0,
            retry_delay_ms: 100,
            ..SendingConfig::default()
        },
        3,
    )
    .await;
    let items: Vec<Outgoing> = (0..10).map(|_| outgoing(true, None)).collect();
    rig.persist(&items).await;
    // The first batch is accepted; the peer is lost before answering the second.
    rig.peer.reply([Reply::Accept, Reply::Fail]);
    rig.queue(&items);
    let b = |i: usize| &items[2 * i..2 * i + 2];
    assert_eq!(
        rig.calls(7).await,
        vec![
            (ms(0), Call::Connect),
            // Three batches out before any answer.
            (ms(0), started(b(0))),
            (ms(0), started(b(1))),
            (ms(0), started(b(2))),
            (ms(0), sent(b(0))),
            // An answer makes room for the next.
            (ms(0), started(b(3))),
            (ms(0), failed(b(1))),
        ]
    );
    // Every batch not answered goes again, in order, after the backoff; the
    // accepted one does not.
    assert_eq!(
        rig.calls(9).await,
        vec![
            (ms(100), Call::Connect),
            (ms(100), started(b(1))),
            (ms(100), started(b(2))),
            (ms(100), started(b(3))),
            (ms(100), sent(b(1))),
            (ms(100), started(b(4))),
            (ms(100), sent(b(2))),
            (ms(100), sent(b(3))),
            (ms(100), sent(b(4))),
        ]
    );
    // Each row deleted once accepted: none is left, none was sent twice after
    // its acceptance.
    rig.wait_outgoing_rows(0).await;
    rig.quiet_for(ms(10_000)).await;
}

#[tokio::test(start_paused = true)]
async fn with_a_window_a_short_batch_waits_for_the_answers_before_it() {
    let mut rig = Rig::start_with_window(
        SendingConfig {
            batch_size: 4,
            batch_window_ms: 0,
            ..SendingConfig::default()
        },
        4,
    )
    .await;
    let items = volatile(6);
    rig.queue(&items);
    // The full batch leaves, the short one only once the peer answered:
    // while a batch is unanswered, more may still join it.
    assert_eq!(
        rig.calls(5).await,
        vec![
            (ms(0), Call::Connect),
            (ms(0), started(&items[..4])),
            (ms(0), sent(&items[..4])),
            (ms(0), started(&items[4..])),
            (ms(0), sent(&items[4..])),
        ]
    );
    rig.quiet_for(ms(10_000)).await;
}
