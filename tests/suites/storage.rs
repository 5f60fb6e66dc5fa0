//! `jasper-host storage …` on every backend: each command does exactly what it
//! says, checked with `storage counts --json` and direct SQL before and after;
//! the DDL script builds a working store in an empty database with the
//! database's own client; errors name what is wrong; a test leaves nothing
//! behind. Every test runs as `name::{sqlite,postgres,mysql}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jasper_e2e::{
    Backend, CmdOut, Counts, FreshDatabase, HostConfig, REMIND_LATER_MS, StateRow, TOOL_TIMEOUT,
    TestHost, json, leftovers, place_order, run_tool, unique_schema,
};

const SETTLE: Duration = Duration::from_secs(120);
const PLUGINS: [&str; 3] = ["orders", "audit", "misbehave"];
/// An owner id no node has: an outgoing row "taken" by some node.
const OTHER_NODE: i64 = 4242;

fn config(backend: Backend) -> HostConfig {
    HostConfig::on(backend)
        .max_attempts(2)
        .retry_delay_ms(10)
        // test.Spin must still be running (its row owned) when the host is killed.
        .deadline_ms(60_000)
}

fn zero() -> Counts {
    Counts {
        incoming: 0,
        scheduled: 0,
        handled: 0,
        outgoing: 0,
        dead_letters: 0,
    }
}

/// What [`populate`] leaves.
fn populated() -> Counts {
    Counts {
        // PlaceOrder o-4, o-5, sent while the host is down
        incoming: 2,
        // the OrderReminder of o-1..o-3, due in ten days
        scheduled: 3,
        // PlaceOrder o-1..o-3, their OrderPlaced, test.Ok 1 and 2
        handled: 8,
        // inserted with SQL (no remote transport yet)
        outgoing: 1,
        // PlaceOrder o-0 (amount 0) and test.Reject, both rejected
        dead_letters: 2,
    }
}

/// State rows [`populate`] leaves: orders `order/o-1..3`; audit `count` and
/// `seen/o-1..3`; misbehave `ok/1`, `ok/2`.
const POPULATED_STATE_ROWS: i64 = 9;

/// Fills the store with every kind of row through a real host (then stopped):
/// see [`populated`].
async fn populate(host: &TestHost) -> Counts {
    let db = host.db();
    host.spawn();
    let orders: Vec<_> = (0..4)
        .map(|i| {
            place_order(
                &format!("o-{i}"),
                if i == 0 { 0 } else { 100 * i },
                REMIND_LATER_MS,
            )
        })
        .collect();
    host.send_file("PlaceOrder", &orders).assert_sent(4);
    host.send_body("test.Reject", &json!({"n": 1}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &[json!({"n": 1}), json!({"n": 2})])
        .assert_sent(2);
    let p = host
        .wait_for(
            "the first messages handled or dead-lettered",
            SETTLE,
            || db.progress(),
            |p| {
                p.get("PlaceOrder", "handled") == 3
                    && p.get("OrderPlaced", "handled") == 3
                    && p.get("test.Ok", "handled") == 2
                    && p.get("OrderReminder", "scheduled") == 3
                    && p.dead_letters == 2
                    && p.with_status("incoming") == 0
            },
        )
        .await;
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}; {p:?}");

    let later: Vec<_> = (4..6)
        .map(|i| place_order(&format!("o-{i}"), 100 * i, REMIND_LATER_MS))
        .collect();
    host.send_file("PlaceOrder", &later).assert_sent(2);
    db.insert_outgoing(
        uuid::Uuid::now_v7(),
        0,
        "tcp://peer.invalid:7000/orders",
        "PlaceOrder",
        br#"{"order_id":"o-out"}"#,
    )
    .await
    .unwrap();

    let c = host.counts();
    assert_eq!(c, populated(), "storage counts of the populated store");
    assert_eq!(
        db.row_count("state").await.unwrap(),
        POPULATED_STATE_ROWS,
        "state rows of the populated store"
    );
    let kinds: Vec<_> = db
        .dead_letter_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.message_type, d.error_kind))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("PlaceOrder".to_owned(), "rejected".to_owned()),
            ("test.Reject".to_owned(), "rejected".to_owned())
        ],
        "dead letters of the populated store"
    );
    c
}

async fn all_state(host: &TestHost) -> BTreeMap<&'static str, BTreeMap<String, StateRow>> {
    let db = host.db();
    let mut out = BTreeMap::new();
    for p in ["orders", "audit", "misbehave"] {
        out.insert(p, db.state(p).await.unwrap());
    }
    out
}

jasper_e2e::per_backend!(
    clear_deletes_every_message_and_keeps_state_and_tables => clear,
    release_hands_rows_of_a_killed_host_back_to_any_node => release,
    rebuild_leaves_empty_tables_and_no_state => rebuild,
    script_builds_a_working_store_in_an_empty_database => script,
    counts_without_tables_says_to_run_rebuild => missing_tables,
    unreachable_store_is_named => unreachable,
    bad_credentials_are_named => bad_credentials,
    a_test_leaves_nothing_behind => nothing_left,
);

// ---------------------------------------------------------------------------

async fn clear(backend: Backend) {
    let host = TestHost::new(&PLUGINS, config(backend));
    let db = host.db();
    populate(&host).await;
    let state_before = all_state(&host).await;
    let nodes_before = db.row_count("nodes").await.unwrap();

    host.cli(&["storage", "clear"], &[]).assert_success();

    assert_eq!(
        host.counts(),
        zero(),
        "storage counts after `storage clear`"
    );
    let rows = db.row_counts().await.unwrap();
    for t in ["incoming", "outgoing", "dead_letters"] {
        assert_eq!(rows[t], 0, "{t} rows after `storage clear`: {rows:?}");
    }
    assert_eq!(
        rows["state"], POPULATED_STATE_ROWS,
        "state rows after `storage clear` (state is kept): {rows:?}"
    );
    assert_eq!(
        all_state(&host).await,
        state_before,
        "state changed by `storage clear`"
    );
    assert_eq!(
        rows["nodes"], nodes_before,
        "`storage clear` deletes messages, not nodes"
    );

    // The store still works, and the kept state is used: audit's count goes on.
    host.spawn();
    host.send_body(
        "PlaceOrder",
        &place_order("o-9", 900, REMIND_LATER_MS),
        None,
    )
    .assert_sent(1);
    let count = host
        .wait_for(
            "audit count 4 after the clear (3 before it + o-9)",
            SETTLE,
            || db.state_get("audit", "count"),
            |r| r.as_ref().is_some_and(|r| r.as_i64().ok() == Some(4)),
        )
        .await;
    println!("[{backend}] audit count after clear + 1 order: {count:?}");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

// ---------------------------------------------------------------------------

async fn release(backend: Backend) {
    let host = TestHost::new(&PLUGINS, config(backend));
    let db = host.db();
    populate(&host).await;

    // A host that dies holding rows: test.Spin messages spin until the
    // SIGKILL (deadline 60 s), their rows owned by the host's node (and
    // whatever else it claimed with them).
    host.spawn();
    host.send_file("test.Spin", &[json!({"n": 1}), json!({"n": 2})])
        .assert_sent(2);
    let owned = host
        .wait_for(
            "a test.Spin row claimed (owner_id <> 0)",
            SETTLE,
            || async {
                Ok(db
                    .incoming_snapshot()
                    .await?
                    .into_iter()
                    .filter(|r| r.message_type == "test.Spin" && r.owner_id != 0)
                    .collect::<Vec<_>>())
            },
            |rows| !rows.is_empty(),
        )
        .await;
    host.kill9();
    let killed_node = owned[0].owner_id;
    // And an outgoing row taken by some node.
    db.insert_outgoing(
        uuid::Uuid::now_v7(),
        OTHER_NODE,
        "tcp://peer.invalid:7000/orders",
        "PlaceOrder",
        br#"{"order_id":"o-out-2"}"#,
    )
    .await
    .unwrap();

    let counts_before = host.counts();
    let incoming_before = db.incoming_snapshot().await.unwrap();
    let outgoing_before = db.outgoing_snapshot().await.unwrap();
    let (owned_in, owned_out) = db.owned_rows().await.unwrap();
    println!(
        "[{backend}] before release: {counts_before:?}; owned rows: {owned_in} incoming (node {killed_node}), {owned_out} outgoing"
    );
    assert!(
        owned_in >= 1,
        "the killed host owns its test.Spin rows: {incoming_before:#?}"
    );
    // OTHER_NODE's row, and the populated owner-0 row too if the host's
    // outgoing relay took it (to send it) before the kill.
    assert!((1..=2).contains(&owned_out), "{outgoing_before:#?}");
    assert!(
        outgoing_before
            .iter()
            .filter(|r| r.owner_id != 0)
            .all(|r| r.owner_id == OTHER_NODE || r.owner_id == killed_node),
        "owned outgoing rows are OTHER_NODE's or the killed node's: {outgoing_before:#?}"
    );
    assert!(
        incoming_before
            .iter()
            .filter(|r| r.owner_id != 0)
            .all(|r| r.owner_id == killed_node),
        "every owned incoming row is the killed node's: {incoming_before:#?}"
    );

    let out = host.cli(&["storage", "release"], &[]);
    out.assert_success();
    println!("[{backend}] storage release: {}", out.stdout.trim());

    assert_eq!(
        db.owned_rows().await.unwrap(),
        (0, 0),
        "owned rows after `storage release`"
    );
    assert_eq!(
        host.counts(),
        counts_before,
        "storage counts changed by `storage release`"
    );
    // Exactly the owner changed, nothing else.
    let unowned_in: Vec<_> = incoming_before
        .into_iter()
        .map(|mut r| {
            r.owner_id = 0;
            r
        })
        .collect();
    assert_eq!(
        db.incoming_snapshot().await.unwrap(),
        unowned_in,
        "incoming rows after `storage release` (only owner_id may change)"
    );
    let unowned_out: Vec<_> = outgoing_before
        .into_iter()
        .map(|mut r| {
            r.owner_id = 0;
            r
        })
        .collect();
    assert_eq!(
        db.outgoing_snapshot().await.unwrap(),
        unowned_out,
        "outgoing rows after `storage release` (only owner_id may change)"
    );
    let spins: Vec<_> = db
        .incoming_snapshot()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.message_type == "test.Spin")
        .collect();
    assert!(
        spins
            .iter()
            .all(|r| r.status == "incoming" && r.owner_id == 0),
        "the killed host's test.Spin rows are ready for any node: {spins:#?}"
    );
}

// ---------------------------------------------------------------------------

async fn rebuild(backend: Backend) {
    let host = TestHost::new(&PLUGINS, config(backend));
    let db = host.db();
    populate(&host).await;
    let before = db.row_counts().await.unwrap();
    assert!(before["state"] > 0, "populated: {before:?}");

    host.cli(&["storage", "rebuild"], &[]).assert_success();

    assert_eq!(
        host.counts(),
        zero(),
        "storage counts after `storage rebuild`"
    );
    let after = db.row_counts().await.unwrap();
    assert!(
        after.values().all(|n| *n == 0),
        "rows of every table after `storage rebuild` (state and nodes too): {after:?}"
    );
    assert_eq!(after.len(), 5, "{after:?}");
}

// ---------------------------------------------------------------------------

/// `sqlite3 FILE < SCRIPT`.
fn sqlite3_apply(db: &Path, script: &Path) -> CmdOut {
    let mut c = Command::new("sqlite3");
    c.args(["-bail"]).arg(db);
    run_tool(c, Some(script), TOOL_TIMEOUT)
}

async fn script(backend: Backend) {
    // Declared first, dropped last: after the host is gone.
    let fresh = (backend != Backend::Sqlite).then(|| FreshDatabase::create(backend));
    let cfg = match &fresh {
        None => HostConfig::new().set("storage", "url", "sqlite://fresh.db"),
        Some(f) => HostConfig::new().storage(f.url(), &unique_schema()),
    };
    let host = TestHost::new(&["orders", "audit"], cfg);
    let db = host.db();
    let store = host.store().clone();
    if let Some(f) = &fresh {
        assert_eq!(
            f.tables(),
            Vec::<String>::new(),
            "the fresh database {}",
            f.name()
        );
    }

    let file = host.root().join("schema.sql");
    let file_s = file.to_str().unwrap().to_owned();
    host.cli(&["storage", "script"], &["--file", &file_s])
        .assert_success();
    let text = std::fs::read_to_string(&file).expect("the script file");
    assert!(
        text.to_uppercase().contains("CREATE TABLE"),
        "the script creates tables:\n{text}"
    );
    // Writing the script created nothing.
    assert_eq!(
        leftovers(&store).await.unwrap(),
        Vec::<String>::new(),
        "objects in the store after `storage script` alone"
    );
    host.cli(&["storage", "counts"], &["--json"])
        .assert_failure()
        .assert_stderr_contains("rebuild");

    let out = match &fresh {
        None => sqlite3_apply(host.db_path(), &file),
        Some(f) => f.apply_file(&file),
    };
    out.assert_success();
    if let Some(f) = &fresh {
        let tables = f.tables();
        println!("[{backend}] tables after the script: {tables:?}");
        assert_eq!(tables.len(), 5, "tables the script made: {tables:?}");
    }
    // The script alone made a complete store: `counts` checks the schema and
    // no host has run yet.
    assert_eq!(host.counts(), zero(), "storage counts after the script");
    assert!(
        db.row_counts().await.unwrap().values().all(|n| *n == 0),
        "empty tables"
    );

    host.spawn();
    host.send_body(
        "PlaceOrder",
        &place_order("o-1", 1250, REMIND_LATER_MS),
        None,
    )
    .assert_sent(1);
    let p = host
        .wait_for(
            "PlaceOrder and its OrderPlaced handled on the scripted store",
            SETTLE,
            || db.progress(),
            |p| p.get("PlaceOrder", "handled") == 1 && p.get("OrderPlaced", "handled") == 1,
        )
        .await;
    assert_eq!(p.dead_letters, 0, "{p:?}");
    let order = db.state_get("orders", "order/o-1").await.unwrap();
    assert!(order.is_some(), "state order/o-1 on the scripted store");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
    if let Some(f) = &fresh {
        assert_eq!(f.tables().len(), 5, "the host made no other tables");
    }
}

// ---------------------------------------------------------------------------

async fn missing_tables(backend: Backend) {
    // A store nobody created: a new SQLite file, an unused schema / prefix.
    let cfg = match backend {
        Backend::Sqlite => HostConfig::new().set("storage", "url", "sqlite://empty.db"),
        b => HostConfig::on(b),
    };
    let host = TestHost::new(&PLUGINS, cfg);
    for cmd in [
        &["storage", "counts"][..],
        &["storage", "clear"],
        &["storage", "release"],
    ] {
        let out = host.cli(cmd, &[]);
        println!("[{backend}] `{}`: {}", cmd.join(" "), out.stderr.trim());
        out.assert_failure()
            .assert_stderr_contains("jasper-host storage rebuild");
    }
    assert_eq!(
        leftovers(host.store()).await.unwrap(),
        Vec::<String>::new(),
        "the failed commands created objects"
    );
}

/// Runs `storage counts`, `send` and `run` against a store that cannot be
/// opened; each must fail (bounded), mention every `needles` and not `secret`.
fn assert_all_fail(host: &TestHost, backend: Backend, needles: &[&str], secret: Option<&str>) {
    let send_body = serde_json::to_string(&place_order("o-1", 100, REMIND_LATER_MS)).unwrap();
    for (what, words, rest) in [
        (
            "storage counts",
            &["storage", "counts"][..],
            &["--json"][..],
        ),
        (
            "send",
            &["send"],
            &["--type", "PlaceOrder", "--body", send_body.as_str()],
        ),
        ("run", &["run"], &[]),
    ] {
        let out = host.cli_timeout(words, rest, None, Duration::from_secs(60));
        println!("[{backend}] `{what}`: {}", out.stderr.trim());
        out.assert_failure();
        for n in needles {
            out.assert_stderr_contains(n);
        }
        if let Some(s) = secret {
            assert!(
                !out.all_output().contains(s),
                "`{what}` printed the password:\n{}",
                out.all_output()
            );
        }
    }
}

async fn unreachable(backend: Backend) {
    let (url, needle) = match backend {
        Backend::Sqlite => (
            format!("sqlite:///nonexistent-{}/jasper.db", unique_schema()),
            String::new(),
        ),
        Backend::Postgres => (
            "postgres://postgres@127.0.0.1:1/test".to_owned(),
            "127.0.0.1:1".to_owned(),
        ),
        Backend::Mysql => (
            "mysql://root@127.0.0.1:1/test".to_owned(),
            "127.0.0.1:1".to_owned(),
        ),
    };
    // SQLite names the missing folder.
    let needle = if needle.is_empty() {
        url.trim_start_matches("sqlite://")
            .trim_end_matches("/jasper.db")
            .to_owned()
    } else {
        needle
    };
    // `run` tries an unreachable server again for storage.connect_retry_ms
    // (late_database.rs); a short one keeps this quick.
    let config =
        HostConfig::new()
            .storage(&url, "jasper")
            .set("storage", "connect_retry_ms", 300u64);
    let host = TestHost::new(&PLUGINS, config);
    assert_all_fail(&host, backend, &[&needle], None);
}

async fn bad_credentials(backend: Backend) {
    const SECRET: &str = "Wr0ngPassw0rd";
    let (url, needles): (String, Vec<&str>) = match backend {
        // SQLite has no credentials; its nearest failure: a file that is not a database.
        Backend::Sqlite => ("sqlite://not-a-db.db".to_owned(), vec!["not a database"]),
        Backend::Postgres => (
            format!("postgres://nobody:{SECRET}@127.0.0.1:5432/test"),
            vec!["nobody"],
        ),
        Backend::Mysql => (
            format!("mysql://nobody:{SECRET}@127.0.0.1:3306/test"),
            vec!["nobody", "denied"],
        ),
    };
    let host = TestHost::new(&PLUGINS, HostConfig::new().storage(&url, "jasper"));
    if backend == Backend::Sqlite {
        std::fs::write(
            host.db_path(),
            b"this is not a SQLite database, ".repeat(200),
        )
        .unwrap();
    }
    assert_all_fail(&host, backend, &needles, Some(SECRET));
}

// ---------------------------------------------------------------------------

async fn nothing_left(backend: Backend) {
    let host = TestHost::new(&["orders", "audit"], HostConfig::on(backend));
    let db = host.db();
    host.spawn();
    host.send_body(
        "PlaceOrder",
        &place_order("o-1", 100, REMIND_LATER_MS),
        None,
    )
    .assert_sent(1);
    host.wait_for(
        "PlaceOrder handled",
        SETTLE,
        || db.incoming_count(Some("handled"), Some("PlaceOrder")),
        |n| *n == 1,
    )
    .await;
    let store = host.store().clone();
    let root = host.root().to_path_buf();
    let before = leftovers(&store).await.unwrap();
    println!("[{backend}] objects of the store while in use: {before:?}");
    assert!(before.len() >= 5, "the store's objects: {before:?}");
    // Dropped with the host still running: the harness kills it, then drops the store.
    drop(host);
    assert_gone(backend, &store, &root, "a passing test").await;

    // The same when the test fails: a test thread that panics with its host
    // running and the tables made.
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let host = TestHost::new(&["orders", "audit"], HostConfig::on(backend));
        tx.send((host.store().clone(), host.root().to_path_buf()))
            .unwrap();
        host.spawn();
        let db = host.db();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(host.wait_for(
                "the host made its tables",
                SETTLE,
                || db.row_count("state"),
                |_| true,
            ));
        panic!("deliberate failure (e2e: a failing test must leave nothing behind either)");
    })
    .join();
    assert!(failed.is_err(), "the test thread was meant to panic");
    let (store, root) = rx.recv().unwrap();
    assert_gone(backend, &store, &root, "a failing test").await;
}

async fn assert_gone(backend: Backend, store: &jasper_e2e::Store, root: &Path, what: &str) {
    assert!(!root.exists(), "{what} left its dir {}", root.display());
    if backend != Backend::Sqlite {
        assert_eq!(
            leftovers(store).await.unwrap(),
            Vec::<String>::new(),
            "{what} left objects of {store} behind"
        );
    }
}
