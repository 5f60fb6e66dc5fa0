//! The worker's loop under paused time, with the real runtime (the `noop`
//! test plugin, built by `make plugins`) and the real SQLite store. The
//! database fails for real: its tables are dropped under the running worker
//! and created again. Store calls take no paused time (see
//! `crate::paused`), so every time asserted is exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::parallel::Calls;
use super::{BatchEvent, Worker, local_row};
use crate::config::{HandlingConfig, PluginsConfig, RabbitConfig, SendingConfig, TcpConfig};
use crate::envelope::Envelope;
use crate::paused::{self, Claim, Frozen};
use crate::runtime::Runtime;
use crate::store::{Admin, Inbox};
use crate::transport::Senders;
use crate::transport::rabbitmq::RabbitSettings;
use crate::transport::tcp::TcpSettings;

/// A test plugin built by `make plugins`; fails loudly (with the command) if missing.
fn wasm(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One worker with the `noop` plugin over a real store.
struct Rig {
    store: Arc<Frozen>,
    wake: Arc<Notify>,
    events: broadcast::Receiver<Arc<BatchEvent>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    worker: Worker,
    /// Kept open: the worker's in-memory queue (`tcp://`), unused here.
    _memory: mpsc::Sender<Vec<Envelope>>,
    memory_rx: Option<mpsc::Receiver<Vec<Envelope>>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(poll_interval_ms: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = paused::sqlite(dir.path()).await;
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).unwrap();
        std::fs::copy(wasm("noop"), plugin_dir.join("noop.wasm")).unwrap();
        let runtime = Arc::new(Runtime::new(&PluginsConfig::default()).unwrap());
        let (plugins, errors) = runtime.load_dir(&plugin_dir).await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let senders = Arc::new(Senders::new(
            store.clone(),
            SendingConfig::default(),
            Arc::new(TcpSettings::from_config(&TcpConfig::default()).unwrap()),
            Arc::new(RabbitSettings {
                config: RabbitConfig::default(),
                connect_timeout: ms(1000),
                confirm_timeout: ms(1000),
            }),
            Arc::new(
                crate::transport::amqp1::AmqpSettings::new(
                    Default::default(),
                    Default::default(),
                    ms(1000),
                    ms(1000),
                )
                .unwrap(),
            ),
            shutdown_rx,
        ));
        let (events_tx, events) = broadcast::channel(64);
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(crate::admin::Metrics::new());
        let calls = Arc::new(Calls::new(
            runtime.clone(),
            store.clone(),
            16,
            metrics.clone(),
        ));
        let worker = Worker {
            store: store.clone(),
            plugins: Arc::new(crate::runtime::LivePlugins::new(plugins)),
            config: HandlingConfig {
                poll_interval_ms,
                ..HandlingConfig::default()
            },
            node_id: 7,
            wake: wake.clone(),
            events: events_tx,
            senders,
            calls,
            unrouted: Default::default(),
            handoff: super::handoff::Handoff::new(super::handoff::HANDOFF_BATCHES),
            metrics,
            replies: Default::default(),
        };
        let (memory, memory_rx) = mpsc::channel(1);
        Rig {
            store,
            wake,
            events,
            shutdown,
            task: None,
            worker,
            _memory: memory,
            memory_rx: Some(memory_rx),
            _dir: dir,
        }
    }

    /// Start the worker; returns when (paused time) it started.
    fn start(&mut self) -> Instant {
        let memory = self.memory_rx.take().unwrap();
        let run = self.worker.clone().run(self.shutdown.subscribe(), memory);
        self.task = Some(tokio::spawn(run));
        Instant::now()
    }

    /// A `bench.Noop` for the `noop` plugin in the inbox, due at `at` (ms)
    /// or at once.
    async fn insert(&self, at: Option<i64>) -> Uuid {
        let mut env = Envelope::new("bench.Noop", b"{}".to_vec());
        env.destination = Some(crate::address::Endpoint::local("noop").into());
        env.scheduled_at = at;
        let report = self
            .store
            .insert_incoming(&[local_row(&env)])
            .await
            .unwrap();
        assert_eq!(report.inserted, 1);
        env.id
    }

    /// The next committed batch and when it came.
    async fn next_event(&mut self) -> (Instant, Arc<BatchEvent>) {
        let got = tokio::time::timeout(Duration::from_secs(600), self.events.recv()).await;
        let event = got.expect("no batch committed").expect("events channel");
        (Instant::now(), event)
    }

    /// Claims from `since` on, as (offset from `since` in ms, rows or None
    /// for a failure).
    fn claims_since(&self, since: Instant) -> Vec<(u64, Option<usize>)> {
        self.store
            .claims()
            .into_iter()
            .filter(|c: &Claim| c.at >= since)
            .map(|c| ((c.at - since).as_millis() as u64, c.rows))
            .collect()
    }

    async fn stop(mut self) {
        self.shutdown.send(true).unwrap();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(ms(10_000), task)
                .await
                .expect("the worker stopped")
                .unwrap();
        }
    }
}

fn handled_ids(event: &BatchEvent) -> Vec<Uuid> {
    event.handled.iter().map(|e| e.id).collect()
}

#[tokio::test(start_paused = true)]
async fn database_backoff_doubles_caps_at_five_seconds_and_resets_once_the_database_is_back() {
    let mut rig = Rig::new(100).await;
    // The database fails for real: no tables.
    rig.store.drop_all().await.unwrap();
    let t0 = rig.start();
    tokio::time::sleep_until(t0 + ms(16_400)).await;
    // Waits of 50, 100, 200, ... ms between failed claims, capped at 5 s.
    let failures = [0, 50, 150, 350, 750, 1550, 3150, 6350, 11_350, 16_350];
    assert_eq!(rig.claims_since(t0), failures.map(|at| (at, None)).to_vec());

    // The database is back (and holds a message) while the worker waits
    // out its 5 s; a wake does not cut that wait short. Its next claim, on
    // time, takes the message.
    rig.store.migrate().await.unwrap();
    let id = rig.insert(None).await;
    rig.wake.notify_one();
    let (at, event) = rig.next_event().await;
    let t1 = t0 + ms(21_350);
    assert_eq!(at, t1);
    assert_eq!(handled_ids(&event), [id]);
    assert_eq!(rig.claims_since(t0 + ms(16_400))[0], (4950, Some(1)));

    // Healthy again: it claims on (once more at once for the wake it was
    // given), then polls every 100 ms.
    tokio::time::sleep_until(t1 + ms(150)).await;
    assert_eq!(
        rig.claims_since(t1),
        [(0, Some(1)), (0, Some(0)), (0, Some(0)), (100, Some(0))]
    );

    // Failing again starts from 50 ms: the success reset the backoff.
    rig.store.drop_all().await.unwrap();
    tokio::time::sleep_until(t1 + ms(560)).await;
    assert_eq!(
        rig.claims_since(t1 + ms(150)),
        [(50, None), (100, None), (200, None), (400, None)]
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_message_wakes_the_worker_at_its_time_and_not_before() {
    // Polling far apart: only the scheduled time can wake the worker sooner.
    let mut rig = Rig::new(60_000).await;
    let due = paused::now_ms() + 5000;
    let id = rig.insert(Some(due)).await;
    let t0 = rig.start();
    let (at, event) = rig.next_event().await;
    assert_eq!(at - t0, ms(5000), "handled at its time");
    assert_eq!(handled_ids(&event), [id]);
    // One claim at start (nothing due), the next at the scheduled time.
    assert_eq!(rig.claims_since(t0)[..2], [(0, Some(0)), (5000, Some(1))]);
    rig.stop().await;
}

/// The receiving side of a `durable://` listener over the rig's store,
/// handing what it writes to the rig's worker.
fn listener_inbox(rig: &Rig) -> crate::transport::receive::Inbox {
    crate::transport::receive::Inbox {
        store: rig.store.clone(),
        plugins: rig.worker.plugins.clone(),
        wake: rig.wake.clone(),
        memory: mpsc::channel(1).0,
        handoff: rig.worker.handoff.clone(),
        node_id: rig.worker.node_id,
        metrics: rig.worker.metrics.clone(),
        via: "durable",
    }
}

fn noops(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|_| Envelope::new("bench.Noop", b"{}".to_vec()))
        .collect()
}

async fn receive_handed(inbox: &crate::transport::receive::Inbox, envs: &[Envelope]) {
    let verdicts = inbox
        .receive_as(
            envs.iter().cloned().map(Ok).collect(),
            crate::transport::receive::Keep::Handed,
        )
        .await
        .unwrap();
    assert!(
        verdicts
            .iter()
            .all(|v| *v == crate::transport::Verdict::Accepted)
    );
}

#[tokio::test(start_paused = true)]
async fn rows_a_listener_hands_over_run_without_a_claim_and_the_inbox_still_gets_its_turn() {
    // Polling far apart: only wakes move the worker.
    let mut rig = Rig::new(60_000).await;
    let inbox = listener_inbox(&rig);
    let t0 = rig.start();
    tokio::time::sleep(ms(10)).await;
    assert_eq!(rig.claims_since(t0), [(0, Some(0))]);

    let first = noops(3);
    receive_handed(&inbox, &first).await;
    let (_, event) = rig.next_event().await;
    let ids = |envs: &[Envelope]| envs.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(handled_ids(&event), ids(&first));
    // No claim took them: every claim since came back empty.
    tokio::time::sleep(ms(10)).await;
    assert!(
        rig.claims_since(t0).iter().all(|c| c.1 == Some(0)),
        "{:?}",
        rig.claims_since(t0)
    );

    // A row waiting in the inbox unclaimed is not held back by the rows
    // handed over after it: it runs next.
    let waiting = rig.insert(None).await;
    let (second, third) = (noops(2), noops(2));
    receive_handed(&inbox, &second).await;
    receive_handed(&inbox, &third).await;
    let mut order = Vec::new();
    while order.len() < 5 {
        order.extend(handled_ids(&rig.next_event().await.1));
    }
    assert_eq!(order[..2], ids(&second));
    assert_eq!(order[2], waiting);
    assert_eq!(order[3..], ids(&third));
    let c = rig.store.counts().await.unwrap();
    assert_eq!((c.handled, c.incoming), (8, 0), "{c:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rows_handed_over_when_shutdown_comes_are_run_before_the_worker_stops() {
    let mut rig = Rig::new(60_000).await;
    let inbox = listener_inbox(&rig);
    rig.start();
    tokio::time::sleep(ms(10)).await;
    let envs = noops(4);
    receive_handed(&inbox, &envs).await;
    // Before the worker took them.
    rig.shutdown.send(true).unwrap();
    let (_, event) = rig.next_event().await;
    assert_eq!(handled_ids(&event).len(), 4);
    let store = rig.store.clone();
    rig.stop().await;
    let c = store.counts().await.unwrap();
    assert_eq!((c.handled, c.incoming), (4, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_message_of_a_plugin_unloaded_by_a_reload_waits_for_it_and_one_of_a_name_never_loaded_is_dead_lettered()
 {
    let mut rig = Rig::new(100).await;
    let noop = rig.worker.plugins.snapshot().get("noop").cloned().unwrap();
    assert!(rig.worker.plugins.remove("noop").is_some());
    let waits = rig.insert(None).await;
    let mut ghost = Envelope::new("bench.Noop", b"{}".to_vec());
    ghost.destination = Some(crate::address::Endpoint::local("ghost").into());
    rig.store
        .insert_incoming(&[local_row(&ghost)])
        .await
        .unwrap();
    let t0 = rig.start();

    // The never-loaded name fails as before: retried with backoff, each
    // attempt counted, then dead-lettered `no-handler`. The message of the
    // unloaded plugin is put back meanwhile, no attempt counted.
    let dead = loop {
        let (_, event) = rig.next_event().await;
        assert!(event.handled.is_empty());
        if let Some(dead) = event.dead_lettered.first() {
            break dead.clone();
        }
    };
    assert_eq!(dead.id, ghost.id);
    assert_eq!(dead.error_kind, crate::store::DeadLetterKind::NoHandler);
    assert_eq!(dead.attempts, HandlingConfig::default().max_attempts);
    // Still away a second after it started: put back again, not dead.
    loop {
        let (at, event) = rig.next_event().await;
        assert!(event.dead_lettered.is_empty() && event.handled.is_empty());
        if event.retried.contains(&waits) && at - t0 >= ms(1000) {
            break;
        }
    }

    // Back: handled at its next turn, on its first attempt.
    assert!(rig.worker.plugins.put(noop).is_none());
    let (at, event) = rig.next_event().await;
    assert_eq!(handled_ids(&event), [waits]);
    assert_eq!(event.handled[0].attempts, 0);
    assert!(at - t0 >= ms(2000), "{:?}", at - t0);
    rig.stop().await;
}
