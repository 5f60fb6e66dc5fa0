//! The message-store compliance suite: every backend (SQLite, PostgreSQL,
//! MySQL/MariaDB) must pass the same tests against a real database. Each test
//! gets its own schema (PostgreSQL) or table prefix (SQLite file, MySQL) and
//! drops it at the end, even when it fails.
//!
//! Servers: `JASPER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `JASPER_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/test`). `.ci/run` starts them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jasper_host::config::{Backend, StorageConfig};
use jasper_host::envelope::Envelope;
use jasper_host::envelope::local_row;
use jasper_host::store::{
    self, ClaimedRow, CommitBatch, DeadLetter, Fence, MessageStore, NewIncoming, NewOutgoing,
    RetryMark, Selection, StateCheck, StateWrite, StoreError,
};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

fn postgres_url() -> String {
    std::env::var("JASPER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("JASPER_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A store in a schema of its own; dropped when the test ends, pass or fail.
struct TestStore {
    store: Arc<dyn MessageStore>,
    config: StorageConfig,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestStore {
    type Target = Arc<dyn MessageStore>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        // Drop the schema on a runtime of its own: the test's runtime may be
        // unwinding. SQLite's file goes with the temp dir.
        let config = self.config.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(s) = store::open(&config).await {
                    s.drop_all().await.unwrap();
                }
            });
        })
        .join();
    }
}

fn config_for(kind: Kind, dir: &tempfile::TempDir) -> StorageConfig {
    let schema = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    let (url, backend) = match kind {
        Kind::Sqlite => (
            "sqlite://t.db".to_string(),
            Backend::Sqlite {
                path: dir.path().join("t.db"),
            },
        ),
        Kind::Postgres => (
            postgres_url(),
            Backend::Postgres {
                url: postgres_url(),
            },
        ),
        Kind::Mysql => (mysql_url(), Backend::Mysql { url: mysql_url() }),
    };
    StorageConfig {
        url,
        schema,
        backend,
        ..StorageConfig::default()
    }
}

async fn open(kind: Kind) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(kind, &dir);
    let store = store::open(&config)
        .await
        .unwrap_or_else(|e| panic!("{kind:?} store: {e}"));
    let t = TestStore {
        store,
        config,
        _dir: dir,
    };
    t.migrate().await.unwrap();
    t
}

/// Each test below runs once per backend.
macro_rules! compliance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Kind::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Kind::Postgres).await } )*
        }
        mod mysql {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Kind::Mysql).await } )*
        }
    };
}

compliance!(
    insert_dedupes_by_id_and_claim_takes_each_row_once,
    a_duplicate_inside_one_insert_does_not_fail_the_rest,
    scheduled_rows_are_claimed_only_when_due,
    commit_marks_handled_writes_state_and_inserts_new_messages_together,
    expired_handled_rows_are_deleted_in_bounded_batches,
    a_stale_state_version_fails_the_whole_commit,
    state_deletes_are_version_checked,
    retries_reschedule_and_dead_letters_replay_into_the_inbox,
    outgoing_rows_commit_with_the_batch_and_are_claimed_and_deleted,
    rows_of_dead_nodes_are_released_never_by_name,
    claims_count_attempts_and_a_lost_claim_is_handed_back,
    a_claim_takes_one_row_that_ended_without_an_outcome,
    a_fenced_commit_writes_nothing_for_rows_another_node_took,
    a_commit_tried_again_after_it_applied_is_not_applied_twice,
    a_batch_of_handled_marks_tried_again_is_a_success_and_a_partial_hold_writes_nothing,
    clear_keeps_schema_and_state_and_rebuild_empties_everything,
    migrate_is_idempotent_and_safe_when_two_hosts_start_together,
    a_missing_schema_is_named_with_the_command_that_creates_it,
    two_nodes_claiming_at_once_never_take_the_same_row,
    state_lists_in_byte_order_and_a_prefix_matches_literally,
    a_dead_letter_is_found_by_id_with_its_body,
);

fn row(dest: &str) -> NewIncoming {
    let mut env = Envelope::new("T", b"{}".to_vec());
    env.destination = Some(dest.into());
    local_row(&env)
}

async fn insert_dedupes_by_id_and_claim_takes_each_row_once(kind: Kind) {
    let s = open(kind).await;
    let rows: Vec<_> = (0..10).map(|_| row("local://a")).collect();
    let r = s.insert_incoming(&rows).await.unwrap();
    assert_eq!((r.inserted, r.duplicates.len()), (10, 0));
    let r = s.insert_incoming(&rows[3..5]).await.unwrap();
    assert_eq!(r.inserted, 0);
    assert_eq!(r.duplicates, vec![rows[3].id, rows[4].id]);

    let first = s.claim_incoming(1, 0, 6).await.unwrap();
    let second = s.claim_incoming(2, 0, 6).await.unwrap();
    assert_eq!((first.len(), second.len()), (6, 4));
    let mut all: Vec<Uuid> = first.iter().chain(&second).map(|r| r.id).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "a row was claimed twice");
    assert!(s.claim_incoming(3, 0, 6).await.unwrap().is_empty());
    // Claimed in id (= time) order.
    let ids: Vec<Uuid> = first.iter().map(|r| r.id).collect();
    assert_eq!(ids, rows[..6].iter().map(|r| r.id).collect::<Vec<_>>());
}

async fn scheduled_rows_are_claimed_only_when_due(kind: Kind) {
    let s = open(kind).await;
    let mut r = row("local://a");
    r.execute_at = Some(5_000);
    s.insert_incoming(&[r.clone()]).await.unwrap();
    assert_eq!(s.counts().await.unwrap().scheduled, 1);
    assert_eq!(s.next_scheduled().await.unwrap(), Some(5_000));
    assert!(s.claim_incoming(1, 4_999, 10).await.unwrap().is_empty());
    let got = s.claim_incoming(1, 5_000, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, r.id);
}

async fn commit_marks_handled_writes_state_and_inserts_new_messages_together(kind: Kind) {
    let s = open(kind).await;
    let a = row("local://a");
    s.insert_incoming(std::slice::from_ref(&a)).await.unwrap();
    s.claim_incoming(1, 0, 10).await.unwrap();
    let new = row("local://b");
    let batch = CommitBatch {
        handled: vec![(a.id, 10_000)],
        new_incoming: vec![new.clone()],
        state_writes: vec![StateWrite {
            plugin: "p".into(),
            key: "k".into(),
            value: Some(b"1".to_vec()),
            expected_version: Some(0),
        }],
        ..Default::default()
    };
    s.commit(&batch).await.unwrap();
    let c = s.counts().await.unwrap();
    assert_eq!((c.incoming, c.handled), (1, 1));
    let st = s.read_state("p", "k").await.unwrap().unwrap();
    assert_eq!((st.value.as_slice(), st.version), (&b"1"[..], 1));
    // The handled row still dedupes.
    assert_eq!(
        s.insert_incoming(std::slice::from_ref(&a))
            .await
            .unwrap()
            .duplicates,
        vec![a.id]
    );
    // Until its keep window ends.
    assert_eq!(s.delete_expired_handled(9_999, 100).await.unwrap(), 0);
    assert_eq!(s.delete_expired_handled(10_000, 100).await.unwrap(), 1);
    assert_eq!(s.insert_incoming(&[a]).await.unwrap().inserted, 1);
}

async fn a_stale_state_version_fails_the_whole_commit(kind: Kind) {
    let s = open(kind).await;
    let a = row("local://a");
    s.insert_incoming(std::slice::from_ref(&a)).await.unwrap();
    let write = |expected| StateWrite {
        plugin: "p".into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
        expected_version: expected,
    };
    s.commit(&CommitBatch {
        state_writes: vec![write(None)],
        ..Default::default()
    })
    .await
    .unwrap();
    // Another batch read version 0 (absent) but the key now exists: stale.
    let stale = CommitBatch {
        handled: vec![(a.id, 1)],
        state_writes: vec![write(Some(0))],
        ..Default::default()
    };
    assert!(matches!(
        s.commit(&stale).await,
        Err(StoreError::StaleState { .. })
    ));
    // Nothing of it committed.
    assert_eq!(s.counts().await.unwrap().handled, 0);
    let checked = CommitBatch {
        handled: vec![(a.id, 1)],
        state_checks: vec![StateCheck {
            plugin: "p".into(),
            key: "k".into(),
            expected_version: 7,
        }],
        ..Default::default()
    };
    assert!(matches!(
        s.commit(&checked).await,
        Err(StoreError::StaleState { .. })
    ));
    let ok = CommitBatch {
        handled: vec![(a.id, 1)],
        state_writes: vec![write(Some(1))],
        ..Default::default()
    };
    s.commit(&ok).await.unwrap();
    assert_eq!(s.read_state("p", "k").await.unwrap().unwrap().version, 2);
}

async fn retries_reschedule_and_dead_letters_replay_into_the_inbox(kind: Kind) {
    let s = open(kind).await;
    let (a, b) = (row("local://a"), row("local://a"));
    s.insert_incoming(&[a.clone(), b.clone()]).await.unwrap();
    s.claim_incoming(1, 0, 10).await.unwrap();
    s.commit(&CommitBatch {
        retries: vec![RetryMark {
            id: a.id,
            attempts: 1,
            execute_at: Some(50),
        }],
        dead_letters: vec![DeadLetter {
            id: b.id,
            message_type: "T".into(),
            received_at: "local://a".into(),
            source: None,
            error_kind: "panic".into(),
            error_message: "boom".into(),
            failed_at: 1,
            attempts: 3,
            replayable: true,
            body: b.body.clone(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.counts().await.unwrap();
    assert_eq!((c.incoming, c.scheduled, c.dead_letters), (0, 1, 1));
    let again = s.claim_incoming(2, 50, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (a.id, 1));
    let dl = s.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0].error_kind.as_str(), dl[0].attempts), ("panic", 3));
    assert_eq!(s.replay_dead_letters(&Selection::All).await.unwrap(), 1);
    let c = s.counts().await.unwrap();
    // The claimed retry counts as incoming too.
    assert_eq!((c.incoming, c.dead_letters), (2, 0));
}

async fn rows_of_dead_nodes_are_released_never_by_name(kind: Kind) {
    let s = open(kind).await;
    s.register_node(10, "n", 9_000).await.unwrap(); // a live host named "n"
    s.register_node(20, "other", 1_000).await.unwrap(); // will go stale
    s.register_node(30, "live", 9_000).await.unwrap();
    let rows: Vec<_> = (0..3).map(|_| row("local://a")).collect();
    s.insert_incoming(&rows).await.unwrap();
    s.claim_incoming(10, 0, 1).await.unwrap();
    s.claim_incoming(20, 0, 1).await.unwrap();
    s.claim_incoming(30, 0, 1).await.unwrap();
    // A second host with the same name starts: it takes only the stale node's row.
    s.register_node(40, "n", 9_000).await.unwrap();
    assert_eq!(s.release_dead_nodes(40, 5_000).await.unwrap(), 1);
    let got = s.claim_incoming(40, 0, 10).await.unwrap();
    assert_eq!(got.len(), 1, "the live nodes' rows must stay with them");
    // The stale node was forgotten: its heartbeat finds no registry row.
    assert!(!s.heartbeat(20, 9_500).await.unwrap());
    assert!(s.heartbeat(10, 9_500).await.unwrap());
    assert_eq!(s.release_all().await.unwrap(), 3);
}

async fn claims_count_attempts_and_a_lost_claim_is_handed_back(kind: Kind) {
    let s = open(kind).await;
    let a = row("local://a");
    s.insert_incoming(std::slice::from_ref(&a)).await.unwrap();
    let first = s.claim_incoming(1, 0, 10).await.unwrap();
    assert_eq!((first[0].attempts, first[0].claim), (0, 1));
    // Node 1 never saw its claim's answer: it hands its claimed rows back.
    assert_eq!(s.release_claimed(2).await.unwrap(), 0);
    assert_eq!(s.release_claimed(1).await.unwrap(), 1);
    let second = s.claim_incoming(2, 0, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    // The claim that ended without an outcome counts as an attempt.
    assert_eq!((second[0].attempts, second[0].claim), (1, 2));
}

/// Rows whose claim never came to an outcome (their node died: maybe of
/// them) are claimed one at a time; due retries and new rows are not held back.
async fn a_claim_takes_one_row_that_ended_without_an_outcome(kind: Kind) {
    let s = open(kind).await;
    let crashed: Vec<NewIncoming> = (0..3).map(|_| row("local://a")).collect();
    s.insert_incoming(&crashed).await.unwrap();
    assert_eq!(s.claim_incoming(1, 0, 10).await.unwrap().len(), 3);
    assert_eq!(s.release_claimed(1).await.unwrap(), 3);
    let retried: Vec<NewIncoming> = (0..2).map(|_| row("local://a")).collect();
    let fresh = row("local://a");
    s.insert_incoming(&retried).await.unwrap();
    s.insert_incoming(std::slice::from_ref(&fresh))
        .await
        .unwrap();
    let mut first = s.claim_incoming(2, 0, 10).await.unwrap();
    first.sort_by_key(|r| r.id);
    let mut want = vec![crashed[0].id, retried[0].id, retried[1].id, fresh.id];
    want.sort();
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        want,
        "new rows and only the first resumed one"
    );
    // The two new rows fail (a committed outcome: due again at 5), the rest are handled.
    let batch = CommitBatch {
        retries: retried
            .iter()
            .map(|r| RetryMark {
                id: r.id,
                attempts: 1,
                execute_at: Some(5),
            })
            .collect(),
        handled: vec![(crashed[0].id, 1_000), (fresh.id, 1_000)],
        ..Default::default()
    };
    s.commit(&batch).await.unwrap();
    let mut second = s.claim_incoming(2, 10, 10).await.unwrap();
    second.sort_by_key(|r| r.id);
    let mut want = vec![crashed[1].id, retried[0].id, retried[1].id];
    want.sort();
    assert_eq!(second.iter().map(|r| r.id).collect::<Vec<_>>(), want);
    let third = s.claim_incoming(2, 10, 10).await.unwrap();
    assert_eq!(
        third.iter().map(|r| r.id).collect::<Vec<_>>(),
        [crashed[2].id]
    );
    assert!(s.claim_incoming(2, 10, 10).await.unwrap().is_empty());
}

fn fenced(node_id: i64, rows: &[ClaimedRow]) -> Option<Fence> {
    Some(Fence {
        node_id,
        rows: rows
            .iter()
            .map(|r| jasper_host::store::Held {
                id: r.id,
                claim: r.claim,
            })
            .collect(),
    })
}

fn blind_write(key: &str) -> StateWrite {
    StateWrite {
        plugin: "p".into(),
        key: key.into(),
        value: Some(b"v".to_vec()),
        expected_version: None,
    }
}

async fn a_fenced_commit_writes_nothing_for_rows_another_node_took(kind: Kind) {
    let s = open(kind).await;
    let (a, b) = (row("local://a"), row("local://a"));
    s.insert_incoming(&[a.clone(), b.clone()]).await.unwrap();
    s.register_node(1, "zombie", 1_000).await.unwrap();
    s.register_node(2, "live", 9_000).await.unwrap();
    let held = s.claim_incoming(1, 0, 10).await.unwrap();
    assert_eq!(held.len(), 2);
    // Node 1 goes silent past its lease; node 2 releases its rows and takes one.
    assert_eq!(s.release_dead_nodes(2, 5_000).await.unwrap(), 2);
    let taken = s.claim_incoming(2, 0, 1).await.unwrap();
    assert_eq!(taken[0].id, a.id);
    // Node 1 wakes and commits its batch: both rows' effects, nothing written.
    let zombie = CommitBatch {
        fence: fenced(1, &held),
        handled: vec![(a.id, 10_000), (b.id, 10_000)],
        new_incoming: vec![row("local://b")],
        state_writes: vec![blind_write("k")],
        ..Default::default()
    };
    match s.commit(&zombie).await {
        Err(StoreError::Lost { mut ids }) => {
            ids.sort();
            let mut want = vec![a.id, b.id];
            want.sort();
            assert_eq!(ids, want, "both rows are lost: a to node 2, b released");
        }
        other => panic!("the zombie's commit must be fenced off, got {other:?}"),
    }
    let c = s.counts().await.unwrap();
    assert_eq!(
        (c.incoming, c.handled),
        (2, 0),
        "nothing of the fenced batch committed"
    );
    assert!(s.read_state("p", "k").await.unwrap().is_none());
    // The rightful holder commits.
    s.commit(&CommitBatch {
        fence: fenced(2, &taken),
        handled: vec![(a.id, 10_000)],
        state_writes: vec![blind_write("k")],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.read_state("p", "k").await.unwrap().unwrap().version, 1);
    // A fence over a row the holder still has, and one it lost, fails whole.
    let again = s.claim_incoming(2, 0, 10).await.unwrap();
    assert_eq!(again[0].id, b.id);
    let mixed = CommitBatch {
        fence: fenced(2, &[again[0].clone(), taken[0].clone()]),
        handled: vec![(b.id, 10_000), (a.id, 10_000)],
        ..Default::default()
    };
    assert!(matches!(s.commit(&mixed).await, Err(StoreError::Lost { ids }) if ids == vec![a.id]));
    assert_eq!(s.counts().await.unwrap().handled, 1);
}

async fn a_commit_tried_again_after_it_applied_is_not_applied_twice(kind: Kind) {
    let s = open(kind).await;
    let (a, b) = (row("local://a"), row("local://a"));
    s.insert_incoming(&[a.clone(), b.clone()]).await.unwrap();
    let held = s.claim_incoming(1, 0, 10).await.unwrap();
    let batch = CommitBatch {
        fence: fenced(1, &held),
        handled: vec![(a.id, 10_000)],
        retries: vec![RetryMark {
            id: b.id,
            attempts: 1,
            execute_at: Some(1_000_000),
        }],
        new_incoming: vec![row("local://b")],
        state_writes: vec![blind_write("k")],
        ..Default::default()
    };
    s.commit(&batch).await.unwrap();
    // The answer to that commit was lost; the worker tries it again: the
    // fence sees this claim's own handled mark and writes nothing more.
    s.commit(&batch).await.unwrap();
    assert_eq!(s.read_state("p", "k").await.unwrap().unwrap().version, 1);
    let c = s.counts().await.unwrap();
    assert_eq!((c.incoming, c.scheduled, c.handled), (1, 1, 1));
}

/// The one-statement fence (a batch that only marks its rows handled):
/// tried again after it applied, it succeeds and changes nothing; over one
/// row held and one another node took, nothing is marked.
async fn a_batch_of_handled_marks_tried_again_is_a_success_and_a_partial_hold_writes_nothing(
    kind: Kind,
) {
    let s = open(kind).await;
    let rows = [
        row("local://a"),
        row("local://a"),
        row("local://a"),
        row("local://a"),
    ];
    s.insert_incoming(&rows).await.unwrap();
    s.register_node(1, "zombie", 1_000).await.unwrap();
    s.register_node(2, "live", 9_000).await.unwrap();
    let first = s.claim_incoming(1, 0, 2).await.unwrap();
    let batch = CommitBatch {
        fence: fenced(1, &first),
        handled: first.iter().map(|r| (r.id, 10_000)).collect(),
        ..Default::default()
    };
    s.commit(&batch).await.unwrap();
    s.commit(&batch).await.unwrap();
    let c = s.counts().await.unwrap();
    assert_eq!((c.incoming, c.handled), (2, 2));
    // Node 1 claims the other two, goes silent; node 2 releases them and
    // takes one back.
    let last = s.claim_incoming(1, 0, 10).await.unwrap();
    assert_eq!(last.len(), 2);
    assert_eq!(s.release_dead_nodes(2, 5_000).await.unwrap(), 2);
    let taken = s.claim_incoming(2, 0, 1).await.unwrap();
    // Node 2 holds one of them and marks it through the one-statement fence
    // with a row it does not hold: nothing is marked.
    let other = last.iter().find(|r| r.id != taken[0].id).unwrap().clone();
    let mixed = CommitBatch {
        fence: fenced(2, &[taken[0].clone(), other.clone()]),
        handled: vec![(taken[0].id, 10_000), (other.id, 10_000)],
        ..Default::default()
    };
    assert!(
        matches!(s.commit(&mixed).await, Err(StoreError::Lost { ids }) if ids == vec![other.id])
    );
    let c = s.counts().await.unwrap();
    assert_eq!(
        (c.incoming, c.handled),
        (2, 2),
        "nothing of the mixed batch is marked"
    );
    // Node 1's batch of both: both lost.
    let zombie = CommitBatch {
        fence: fenced(1, &last),
        handled: last.iter().map(|r| (r.id, 10_000)).collect(),
        ..Default::default()
    };
    assert!(matches!(s.commit(&zombie).await, Err(StoreError::Lost { ids }) if ids.len() == 2));
    // Node 2 marks the row it holds.
    s.commit(&CommitBatch {
        fence: fenced(2, &taken),
        handled: vec![(taken[0].id, 10_000)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.counts().await.unwrap().handled, 3);
}

async fn clear_keeps_schema_and_state_and_rebuild_empties_everything(kind: Kind) {
    let s = open(kind).await;
    s.insert_incoming(&[row("local://a")]).await.unwrap();
    s.commit(&CommitBatch {
        state_writes: vec![StateWrite {
            plugin: "p".into(),
            key: "k".into(),
            value: Some(vec![1]),
            expected_version: None,
        }],
        outgoing: vec![outgoing("tcp://h:1")],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.counts().await.unwrap().outgoing, 1);
    s.clear().await.unwrap();
    assert_eq!(s.counts().await.unwrap(), Default::default());
    assert!(s.read_state("p", "k").await.unwrap().is_some());
    s.check_schema().await.unwrap();
    s.rebuild().await.unwrap();
    s.check_schema().await.unwrap();
    assert!(s.read_state("p", "k").await.unwrap().is_none());
}

async fn a_duplicate_inside_one_insert_does_not_fail_the_rest(kind: Kind) {
    let s = open(kind).await;
    let a = row("local://a");
    let b = row("local://a");
    let r = s
        .insert_incoming(&[a.clone(), a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(r.inserted, 2);
    assert_eq!(r.duplicates, vec![a.id]);
    // Inside a group commit too.
    let c = row("local://b");
    s.commit(&CommitBatch {
        new_incoming: vec![c.clone(), c.clone(), a.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.counts().await.unwrap().incoming, 3);
}

async fn expired_handled_rows_are_deleted_in_bounded_batches(kind: Kind) {
    let s = open(kind).await;
    let rows: Vec<_> = (0..25).map(|_| row("local://a")).collect();
    s.insert_incoming(&rows).await.unwrap();
    s.claim_incoming(1, 0, 100).await.unwrap();
    let mut handled: Vec<(Uuid, i64)> = rows.iter().map(|r| (r.id, 100)).collect();
    handled[0].1 = 1_000; // kept longer
    s.commit(&CommitBatch {
        handled,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.counts().await.unwrap().handled, 25);
    assert_eq!(s.delete_expired_handled(100, 10).await.unwrap(), 10);
    assert_eq!(s.delete_expired_handled(100, 10).await.unwrap(), 10);
    assert_eq!(s.delete_expired_handled(100, 10).await.unwrap(), 4);
    assert_eq!(s.delete_expired_handled(100, 10).await.unwrap(), 0);
    assert_eq!(s.counts().await.unwrap().handled, 1);
}

async fn state_deletes_are_version_checked(kind: Kind) {
    let s = open(kind).await;
    let put = |value: Option<Vec<u8>>, expected| CommitBatch {
        state_writes: vec![StateWrite {
            plugin: "p".into(),
            key: "k".into(),
            value,
            expected_version: expected,
        }],
        ..Default::default()
    };
    s.commit(&put(Some(b"a".to_vec()), Some(0))).await.unwrap();
    s.commit(&put(Some(b"b".to_vec()), Some(1))).await.unwrap();
    let v = s.read_state("p", "k").await.unwrap().unwrap();
    assert_eq!((v.value.as_slice(), v.version), (&b"b"[..], 2));
    assert!(matches!(
        s.commit(&put(None, Some(1))).await,
        Err(StoreError::StaleState { .. })
    ));
    s.commit(&put(None, Some(2))).await.unwrap();
    assert!(s.read_state("p", "k").await.unwrap().is_none());
    // Deleting what was absent when read: fine while it stays absent.
    s.commit(&put(None, Some(0))).await.unwrap();
    // Blind writes never conflict.
    s.commit(&put(Some(b"c".to_vec()), None)).await.unwrap();
    s.commit(&put(Some(b"d".to_vec()), None)).await.unwrap();
    assert_eq!(s.read_state("p", "k").await.unwrap().unwrap().version, 2);
    s.commit(&put(None, None)).await.unwrap();
    assert!(s.read_state("p", "k").await.unwrap().is_none());
}

fn outgoing(dest: &str) -> NewOutgoing {
    let mut env = Envelope::new("T", b"{}".to_vec());
    env.destination = Some(dest.into());
    NewOutgoing {
        id: env.id,
        destination: dest.into(),
        deliver_by: Some(123),
        attempts: 0,
        message_type: "T".into(),
        owner_id: 0,
        body: env.encode(),
    }
}

async fn outgoing_rows_commit_with_the_batch_and_are_claimed_and_deleted(kind: Kind) {
    let s = open(kind).await;
    let mut owned = outgoing("tcp://h:1");
    owned.owner_id = 7;
    let free: Vec<_> = (0..3).map(|_| outgoing("tcp://h:2")).collect();
    let mut all = free.clone();
    all.push(owned.clone());
    all.push(free[0].clone()); // a duplicate id is kept once
    s.commit(&CommitBatch {
        outgoing: all,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.counts().await.unwrap().outgoing, 4);
    assert_eq!(
        s.outgoing_by_destination().await.unwrap(),
        [("tcp://h:2".to_owned(), 3), ("tcp://h:1".to_owned(), 1)],
        "per destination, busiest first"
    );
    let got = s.claim_outgoing(9, 2).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, free[0].id);
    assert_eq!(got[0].destination, "tcp://h:2");
    assert_eq!(got[0].deliver_by, Some(123));
    assert_eq!(got[0].body, free[0].body);
    let rest = s.claim_outgoing(9, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "owned rows are not claimed");
    let ids: Vec<Uuid> = got.iter().map(|r| r.id).collect();
    assert_eq!(s.delete_outgoing(&ids).await.unwrap(), 2);
    assert_eq!(s.delete_outgoing(&ids).await.unwrap(), 0);
    assert_eq!(s.counts().await.unwrap().outgoing, 2);
    // A dead owner's rows come back.
    assert_eq!(s.release_all().await.unwrap(), 2);
    assert_eq!(s.claim_outgoing(9, 10).await.unwrap().len(), 2);
}

async fn migrate_is_idempotent_and_safe_when_two_hosts_start_together(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(kind, &dir);
    let a = store::open(&config).await.unwrap();
    let b = store::open(&config).await.unwrap();
    let guard = TestStore {
        store: a.clone(),
        config,
        _dir: dir,
    };
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    guard.check_schema().await.unwrap();
    guard.insert_incoming(&[row("local://a")]).await.unwrap();
    assert_eq!(b.counts().await.unwrap().incoming, 1);
}

async fn a_missing_schema_is_named_with_the_command_that_creates_it(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(kind, &dir);
    let s = store::open(&config).await.unwrap();
    let err = s.check_schema().await.unwrap_err().to_string();
    assert!(err.contains("storage rebuild"), "{err}");
    assert!(matches!(
        s.check_schema().await,
        Err(StoreError::MissingSchema { .. })
    ));
}

async fn two_nodes_claiming_at_once_never_take_the_same_row(kind: Kind) {
    let s = open(kind).await;
    let rows: Vec<_> = (0..600).map(|_| row("local://a")).collect();
    s.insert_incoming(&rows).await.unwrap();
    // A second store on the same database: another node's connections.
    let other = store::open(&s.config).await.unwrap();
    let claim_all = |store: Arc<dyn MessageStore>, node: i64| async move {
        let mut got = Vec::new();
        for _ in 0..1000 {
            let batch = store.claim_incoming(node, 0, 25).await.unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch.into_iter().map(|r| r.id));
        }
        got
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claim_all(s.store.clone(), 1)),
        tokio::spawn(claim_all(other, 2))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<Uuid> = a.iter().chain(&b).copied().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, all.len(), "a row was claimed by both nodes");
    assert_eq!(n, 600, "every row claimed once ({} + {})", a.len(), b.len());
}

/// `state list`: one plugin's keys only, in byte order on every backend
/// (PostgreSQL's collation aside), under a prefix taken literally (`%`, `_`
/// and `\\` are no wildcards, case counts), at most `limit` of them.
async fn state_lists_in_byte_order_and_a_prefix_matches_literally(kind: Kind) {
    let s = open(kind).await;
    let keys = ["b", "a", "A", "a%", "a_b", "ab", "a\\x", "aé", "a%z"];
    let mut writes: Vec<StateWrite> = keys
        .iter()
        .map(|k| StateWrite {
            plugin: "p".into(),
            key: (*k).into(),
            value: Some(format!("\"{k}\"").into_bytes()),
            expected_version: None,
        })
        .collect();
    writes.push(StateWrite {
        plugin: "q".into(),
        key: "a".into(),
        value: Some(b"other".to_vec()),
        expected_version: None,
    });
    s.commit(&CommitBatch {
        state_writes: writes,
        ..Default::default()
    })
    .await
    .unwrap();
    // A second version of one key.
    s.commit(&CommitBatch {
        state_writes: vec![blind_write("ab")],
        ..Default::default()
    })
    .await
    .unwrap();
    let listed = |prefix: &'static str, limit: usize| {
        let s = &s;
        async move {
            s.list_state("p", prefix, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("", 100).await,
        ["A", "a", "a%", "a%z", "a\\x", "a_b", "ab", "aé", "b"],
        "every key of p, byte-wise"
    );
    assert_eq!(
        listed("a", 100).await,
        ["a", "a%", "a%z", "a\\x", "a_b", "ab", "aé"]
    );
    assert_eq!(listed("a%", 100).await, ["a%", "a%z"], "% is literal");
    assert_eq!(listed("a_", 100).await, ["a_b"], "_ is literal");
    assert_eq!(listed("a\\", 100).await, ["a\\x"], "\\ is literal");
    assert_eq!(listed("aé", 100).await, ["aé"]);
    assert!(listed("c", 100).await.is_empty());
    assert!(listed("ab_", 100).await.is_empty());
    assert_eq!(listed("a", 2).await, ["a", "a%"], "the first `limit` keys");

    let all = s.list_state("p", "a_", 10).await.unwrap();
    assert_eq!(
        (all[0].value.as_slice(), all[0].version),
        (&b"\"a_b\""[..], 1)
    );
    let ab = s.list_state("p", "ab", 10).await.unwrap();
    assert_eq!((ab[0].key.as_str(), ab[0].version), ("ab", 2));
    let q = s.list_state("q", "", 10).await.unwrap();
    assert_eq!(q.len(), 1, "only q's keys: {q:?}");
    assert_eq!(q[0].value, b"other");
    assert!(s.list_state("none", "", 10).await.unwrap().is_empty());
}

/// `dead-letters show`: one dead letter by id, with the stored envelope
/// byte for byte; an unknown id is `None`.
async fn a_dead_letter_is_found_by_id_with_its_body(kind: Kind) {
    let s = open(kind).await;
    let (a, b) = (row("local://a"), row("local://a"));
    let dead = |r: &NewIncoming, replayable| DeadLetter {
        id: r.id,
        message_type: "T".into(),
        received_at: "local://a".into(),
        source: Some("src".into()),
        error_kind: "bad-message".into(),
        error_message: "why".into(),
        failed_at: 5,
        attempts: 0,
        replayable,
        body: r.body.clone(),
    };
    s.commit(&CommitBatch {
        dead_letters: vec![dead(&a, true), dead(&b, false)],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = s.dead_letter(b.id).await.unwrap().unwrap();
    assert_eq!(got.id, b.id);
    assert_eq!(got.body, b.body, "the stored envelope, byte for byte");
    assert_eq!(
        (
            got.error_kind.as_str(),
            got.replayable,
            got.source.as_deref()
        ),
        ("bad-message", false, Some("src"))
    );
    assert!(s.dead_letter(Uuid::now_v7()).await.unwrap().is_none());
    // A dead letter that is not replayable stays through a replay of it.
    assert_eq!(
        s.replay_dead_letters(&Selection::Ids(vec![b.id]))
            .await
            .unwrap(),
        0
    );
    assert!(s.dead_letter(b.id).await.unwrap().is_some());
}
