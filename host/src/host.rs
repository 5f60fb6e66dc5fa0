//! A running host in-process: open the store, load the plugins (and watch
//! their folder, `plugins.watch`), recover, and run the message worker and
//! the durability agent until shut down. The binary's `run` and the tests
//! both start hosts through here.

use std::sync::Arc;

use anyhow::Context;
use rand::Rng;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::address::{Destination, Endpoint, RabbitEndpoint};
use crate::admin::Metrics;
use crate::config::Config;
use crate::durability;
use crate::envelope::local_row;
use crate::handling::handoff::{HANDOFF_BATCHES, Handoff};
use crate::handling::parallel::Calls;
use crate::handling::replies::Replies;
use crate::handling::unrouted::UnroutedCount;
use crate::handling::{BatchEvent, Worker};
use crate::runtime::reload::FolderWatch;
use crate::runtime::{LivePlugins, Runtime};
use crate::store::{self, CommitBatch, MessageStore};
use crate::transport::amqp1::{self, AmqpSettings};
use crate::transport::rabbitmq::{self, RabbitSettings};
use crate::transport::receive::{Inbox, MEMORY_QUEUE_BATCHES};
use crate::transport::tcp::{TcpSettings, listener};
use crate::transport::{self, Outgoing, Senders};

/// A host started with [`Host::start`].
#[derive(Debug)]
pub struct Host {
    pub node_id: i64,
    pub store: Arc<dyn MessageStore>,
    pub runtime: Arc<Runtime>,
    /// The plugins now: a snapshot of them with `plugins.snapshot()`.
    pub plugins: Arc<LivePlugins>,
    /// The listeners' URIs as bound (a configured port 0 shows the real one).
    pub listeners: Vec<String>,
    senders: Arc<Senders>,
    events: broadcast::Sender<Arc<BatchEvent>>,
    wake: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    unrouted: UnroutedCount,
    metrics: Arc<Metrics>,
    /// The admin endpoint's address, when `[admin] listen` is set.
    pub admin: Option<std::net::SocketAddr>,
}

impl Host {
    /// Start a host from a configuration: the store's tables are created if
    /// missing, every plugin in the folder is loaded (failures are logged
    /// with their file and reason; the others run), and rows left by earlier
    /// runs are recovered. Fails, naming each file and its reason, when the
    /// folder holds `.wasm` files and none of them loads; a folder with no
    /// `.wasm` file at all is a forwarder's and starts.
    pub async fn start(config: Config) -> anyhow::Result<Host> {
        let tcp = Arc::new(TcpSettings::from_config(&config.tcp)?);
        // A database not up yet is waited for (storage.connect_retry_ms).
        let store = store::open_and_migrate(
            &config.storage,
            std::time::Duration::from_millis(config.durability.store_timeout_ms),
        )
        .await?;
        let runtime = Arc::new(Runtime::new(&config.plugins)?);
        // Watched before the first load, so no change made during it is
        // missed; a folder that cannot be read fails the load first.
        let folder_watch = config
            .plugins
            .watch
            .then(|| FolderWatch::start(&config.plugins.dir));
        let (mut plugins, errors) = runtime
            .load_dir(&config.plugins.dir)
            .await
            .with_context(|| format!("loading plugins from {}", config.plugins.dir.display()))?;
        // Plugins were meant to run here, and none can: starting would leave
        // every message waiting in the inbox behind one WARN. A folder with
        // no `.wasm` at all is a forwarder's (routes only) and is allowed.
        if plugins.is_empty() && !errors.is_empty() {
            anyhow::bail!(no_plugin_loaded(&config.plugins.dir, &errors));
        }
        for e in &errors {
            warn!(error = %crate::error_chain(e), "plugin not loaded");
        }
        for p in plugins.iter() {
            info!(event = %"plugin-loaded", name = %p.name, version = %p.short_version(), path = %p.path.display(), subscriptions = ?p.subscriptions, "plugin loaded");
        }
        let folder_watch = folder_watch.transpose()?;
        // A host with routes but no plugins is a forwarder; without either
        // nothing it receives can be handled.
        if plugins.is_empty() && config.route.is_empty() {
            warn!(dir = %config.plugins.dir.display(), "no plugin loaded: messages will wait in the inbox");
        }
        plugins.add_routes(&config.route);
        let loaded = plugins.len();
        let plugins = Arc::new(LivePlugins::new(plugins));
        let metrics = Arc::new(Metrics::new());
        metrics.plugins(loaded, loaded as u64);
        let node_id = rand::rng().random_range(1..i64::MAX);
        durability::recover_on_start(&*store, node_id, &config.node.name, &config.durability)
            .await?;
        let (shutdown, rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let (events, _) = broadcast::channel(4096);
        let rabbit = Arc::new(RabbitSettings {
            config: config.rabbitmq.clone(),
            connect_timeout: std::time::Duration::from_millis(config.sending.connect_timeout_ms),
            confirm_timeout: std::time::Duration::from_millis(config.sending.ack_timeout_ms),
        });
        let amqp = Arc::new(AmqpSettings::new(
            config.amqp.clone(),
            config.azure_service_bus.clone(),
            std::time::Duration::from_millis(config.sending.connect_timeout_ms),
            std::time::Duration::from_millis(config.sending.ack_timeout_ms),
        )?);
        let senders = Arc::new(
            Senders::new(
                store.clone(),
                config.sending.clone(),
                tcp.clone(),
                rabbit.clone(),
                amqp.clone(),
                rx.clone(),
            )
            .with_metrics(metrics.clone()),
        );
        let (memory_tx, memory_rx) = mpsc::channel(MEMORY_QUEUE_BATCHES);
        let handoff = Handoff::new(HANDOFF_BATCHES);
        let inbox = Inbox {
            store: store.clone(),
            plugins: plugins.clone(),
            wake: wake.clone(),
            memory: memory_tx,
            handoff: handoff.clone(),
            node_id,
            metrics: metrics.clone(),
            via: "tcp",
        };
        let mut listeners = Vec::new();
        let mut tasks = Vec::new();
        for l in &config.listen {
            match &l.uri {
                Endpoint::Tcp(t) => {
                    let via = if t.durable { "durable" } else { "tcp" };
                    let bound = listener::start(t, tcp.clone(), inbox.via(via), rx.clone()).await?;
                    listeners.push(bound.uri);
                    tasks.push(bound.task);
                }
                Endpoint::Rabbit(RabbitEndpoint::Queue(q)) => {
                    let (uri, task) = rabbitmq::listener::start(
                        q.clone(),
                        rabbit.clone(),
                        inbox.via("rabbitmq"),
                        rx.clone(),
                    );
                    listeners.push(uri);
                    tasks.push(task);
                }
                Endpoint::Amqp(a) => {
                    let via = if a.is_service_bus() { "asb" } else { "amqp" };
                    let (uri, task) =
                        amqp1::listener::start(a.clone(), amqp.clone(), inbox.via(via), rx.clone());
                    listeners.push(uri);
                    tasks.push(task);
                }
                other => anyhow::bail!(
                    "listen uri {:?} is not a listener this host can start",
                    other.to_string()
                ),
            }
        }
        let unrouted = UnroutedCount::default();
        let replies = Arc::new(Replies::default());
        let worker = Worker {
            store: store.clone(),
            plugins: plugins.clone(),
            config: config.handling.clone(),
            node_id,
            wake: wake.clone(),
            events: events.clone(),
            senders: senders.clone(),
            calls: Arc::new(Calls::new(
                runtime.clone(),
                store.clone(),
                config.plugins.max_in_flight,
                metrics.clone(),
            )),
            unrouted: unrouted.clone(),
            handoff,
            metrics: metrics.clone(),
            replies: replies.clone(),
        };
        if let Some(folder_watch) = folder_watch {
            tasks.push(tokio::spawn(folder_watch.run(
                runtime.clone(),
                plugins.clone(),
                metrics.clone(),
                rx.clone(),
            )));
        }
        tasks.extend([
            tokio::spawn(worker.run(rx.clone(), memory_rx)),
            tokio::spawn(transport::run_relay(
                store.clone(),
                senders.clone(),
                node_id,
                std::time::Duration::from_millis(config.sending.recovery_interval_ms),
                rx.clone(),
            )),
            tokio::spawn(durability::run_agent(
                store.clone(),
                node_id,
                config.node.name.clone(),
                config.durability.clone(),
                wake.clone(),
                rx,
            )),
        ]);
        // Last: ready means started (plugins loaded, listeners bound).
        let admin = match &config.admin.listen {
            Some(listen) => {
                let state = crate::admin::AdminState {
                    store: store.clone(),
                    metrics: metrics.clone(),
                    ingress: Arc::new(crate::admin::ingress::Ingress::new(
                        inbox.via("http"),
                        replies,
                        &config.admin,
                    )),
                    dead_letters: Arc::new(crate::admin::dead_letters::DeadLetterPage {
                        store: store.clone(),
                        token: config.admin.token.clone(),
                        wake: wake.clone(),
                    }),
                };
                let bound = crate::admin::start(listen, state, shutdown.subscribe()).await?;
                tasks.push(bound.task);
                Some(bound.addr)
            }
            None => None,
        };
        info!(node_id, name = %config.node.name, plugins = loaded, "host started");
        Ok(Host {
            node_id,
            store,
            runtime,
            plugins,
            listeners,
            senders,
            events,
            wake,
            shutdown,
            tasks,
            unrouted,
            metrics,
            admin,
        })
    }

    /// The host's metrics (what `/metrics` shows).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The sending agents (benchmarks hand them envelopes directly).
    pub fn senders(&self) -> &Arc<Senders> {
        &self.senders
    }

    /// How many messages handlers published (or scheduled) that no plugin
    /// subscribes to and no route matches, since start: each was logged
    /// (`event=unrouted`) and dropped or dead-lettered as `handling.unrouted`
    /// says. Counted once its handler's batch committed.
    pub fn unrouted_published(&self) -> u64 {
        self.unrouted.get()
    }

    /// Committed batches, as they happen (for tracked sessions and tests).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BatchEvent>> {
        self.events.subscribe()
    }

    /// Write a message into the inbox, one copy per subscribing plugin, and
    /// wake the worker. Returns the envelopes written (a duplicate id writes
    /// nothing and returns an empty list).
    pub async fn send(
        &self,
        message_type: &str,
        body: Vec<u8>,
        id: Option<uuid::Uuid>,
    ) -> anyhow::Result<Vec<crate::Envelope>> {
        let envelopes = crate::sending::envelopes_for(
            self.plugins.snapshot().router(),
            message_type,
            body,
            id,
            None,
            "host",
        )?;
        let (remote, local): (Vec<_>, Vec<_>) = envelopes
            .into_iter()
            .partition(|e| e.destination.as_ref().is_some_and(Destination::is_remote));
        let rows: Vec<_> = local.iter().map(local_row).collect();
        let report = self.store.insert_incoming(&rows).await?;
        self.wake.notify_one();
        let mut sent: Vec<_> = local
            .into_iter()
            .filter(|e| !report.duplicates.contains(&e.id))
            .collect();
        if !remote.is_empty() {
            let outgoing: Vec<Outgoing> = remote
                .iter()
                .map(|e| {
                    let durable = e.destination.as_ref().is_some_and(Destination::is_durable);
                    Outgoing::from_envelope(e, durable)
                })
                .collect();
            let commit = CommitBatch {
                outgoing: outgoing
                    .iter()
                    .filter(|o| o.durable)
                    .map(|o| o.row(self.node_id))
                    .collect(),
                ..CommitBatch::default()
            };
            self.store.commit(&commit).await?;
            self.senders.dispatch(outgoing).await;
            sent.extend(remote);
        }
        Ok(sent)
    }

    /// Drop and recreate every message-store object: the test set-up of
    /// Jasper's `RebuildMessageSchema()`.
    pub async fn rebuild_message_schema(&self) -> anyhow::Result<()> {
        Ok(self.store.rebuild().await?)
    }

    /// Delete every persisted message of every kind (state stays).
    pub async fn clear_all_persisted_messages(&self) -> anyhow::Result<()> {
        Ok(self.store.clear().await?)
    }

    /// Drain: take no new work, finish the batch in hand, stop every task,
    /// flush the senders, then leave the store, handing back (owner 0) what
    /// this node still holds. Bounded by the caller (`run` applies
    /// `handling.drain_timeout_ms`).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.await.context("host task panicked")?;
        }
        self.senders.join().await;
        let released = self.store.leave(self.node_id).await?;
        info!(
            node_id = self.node_id,
            released,
            event = %"host-stopped",
            "host stopped; rows still held were handed back"
        );
        Ok(())
    }
}

/// The start-up error of a plugin folder whose every `.wasm` failed: one line
/// per file with its reason.
fn no_plugin_loaded(dir: &std::path::Path, errors: &[crate::runtime::PluginError]) -> String {
    let mut msg = format!(
        "no plugin in {} loaded ({} .wasm file(s) failed); a host runs as a forwarder (routes only) only when its plugin folder holds no .wasm file",
        dir.display(),
        errors.len()
    );
    for e in errors {
        msg.push_str("\n  ");
        msg.push_str(&crate::error_chain(e));
    }
    msg
}
