//! The SQLite message store against a real file: dedupe, claims, group commit
//! with version checks, retries, dead letters and replay, node recovery,
//! cleanup and admin commands. (Issue 3 turns this into the compliance suite
//! every backend runs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jasper_host::config::{Backend, StorageConfig};
use jasper_host::envelope::Envelope;
use jasper_host::handling::local_row;
use jasper_host::store::{
    self, CommitBatch, DeadLetter, MessageStore, NewIncoming, RetryMark, StateCheck, StateWrite,
    StoreError,
};
use uuid::Uuid;

async fn store(dir: &tempfile::TempDir) -> Arc<dyn MessageStore> {
    let cfg = StorageConfig {
        url: "sqlite://t.db".into(),
        schema: "jasper".into(),
        backend: Backend::Sqlite {
            path: dir.path().join("t.db"),
        },
    };
    let s = store::open(&cfg).await.unwrap();
    s.migrate().await.unwrap();
    s
}

fn row(dest: &str) -> NewIncoming {
    let mut env = Envelope::new("T", b"{}".to_vec());
    env.destination = Some(dest.into());
    local_row(&env)
}

#[tokio::test]
async fn insert_dedupes_by_id_and_claim_takes_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
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

#[tokio::test]
async fn scheduled_rows_are_claimed_only_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
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

#[tokio::test]
async fn commit_marks_handled_writes_state_and_inserts_new_messages_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
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

#[tokio::test]
async fn a_stale_state_version_fails_the_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
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

#[tokio::test]
async fn retries_reschedule_and_dead_letters_replay_into_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
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
    assert_eq!(s.replay_dead_letters(&[]).await.unwrap(), 1);
    let c = s.counts().await.unwrap();
    // The claimed retry counts as incoming too.
    assert_eq!((c.incoming, c.dead_letters), (2, 0));
}

#[tokio::test]
async fn rows_of_dead_nodes_and_earlier_runs_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    s.register_node(10, "n", 9_000).await.unwrap(); // earlier run of "n", killed just now
    s.register_node(20, "other", 1_000).await.unwrap(); // will go stale
    s.register_node(30, "live", 9_000).await.unwrap();
    let rows: Vec<_> = (0..3).map(|_| row("local://a")).collect();
    s.insert_incoming(&rows).await.unwrap();
    s.claim_incoming(10, 0, 1).await.unwrap();
    s.claim_incoming(20, 0, 1).await.unwrap();
    s.claim_incoming(30, 0, 1).await.unwrap();
    s.register_node(40, "n", 9_000).await.unwrap(); // this run
    // Periodic sweep: only the stale node.
    assert_eq!(s.release_dead_nodes(40, None, 5_000).await.unwrap(), 1);
    // Start-up: also the earlier run with the same name.
    assert_eq!(s.release_dead_nodes(40, Some("n"), 5_000).await.unwrap(), 1);
    let got = s.claim_incoming(40, 0, 10).await.unwrap();
    assert_eq!(got.len(), 2, "the live node's row must stay with it");
    assert_eq!(s.release_all().await.unwrap(), 3);
}

#[tokio::test]
async fn clear_keeps_schema_and_state_and_missing_schema_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    s.insert_incoming(&[row("local://a")]).await.unwrap();
    s.commit(&CommitBatch {
        state_writes: vec![StateWrite {
            plugin: "p".into(),
            key: "k".into(),
            value: Some(vec![1]),
            expected_version: None,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    s.clear().await.unwrap();
    assert_eq!(s.counts().await.unwrap(), Default::default());
    assert!(s.read_state("p", "k").await.unwrap().is_some());
    s.check_schema().await.unwrap();

    let empty_dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        url: "sqlite://e.db".into(),
        schema: "jasper".into(),
        backend: Backend::Sqlite {
            path: empty_dir.path().join("e.db"),
        },
    };
    let e = store::open(&cfg).await.unwrap();
    let err = e.check_schema().await.unwrap_err().to_string();
    assert!(err.contains("storage rebuild"), "{err}");
}
