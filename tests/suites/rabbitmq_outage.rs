//! The broker goes away: `rabbitmqctl stop_app` for ten seconds in the
//! middle of a 10,000-order stream from host A (orders, publishing
//! OrderPlaced to a queue) to host B (audit, consuming it). Both hosts must
//! ride it out on their own: A keeps handling and holds what it cannot
//! publish (its breaker opens, pings, closes), B's listener reconnects, and
//! in the end every effect exists exactly once, A's outgoing table is empty
//! and both stop cleanly on SIGTERM.
//!
//! A test binary of its own: cargo runs test binaries one after another, so
//! no other suite sees the broker down. The broker is started again by a
//! guard even if the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rabbit_common.rs"]
mod rabbit_common;

use std::time::{Duration, Instant};

use jasper_e2e::amqp::{Amqp, BrokerOutage, broker_answers};
use rabbit_common::*;

/// The outage: the one fixed duration of the suite, it is the spec.
const OUTAGE: Duration = Duration::from_secs(10);
/// Orders given to A before the outage; the rest come during it.
const BEFORE: usize = N * 3 / 4;
/// How long into the outage B's inbox may still take a batch that was in
/// flight when the broker went (committed after the broker closed the
/// connection, before the listener noticed).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_ten_seconds_then_back_loses_nothing() {
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let pair = Pair::new(&amqp);
    let (da, db) = (pair.a.db(), pair.b.db());
    pair.spawn_b().await;
    pair.a
        .send_file("PlaceOrder", &bodies(0..BEFORE))
        .assert_sent(BEFORE);
    pair.a.spawn();
    let threshold = N as i64 / 10;
    pair.b
        .wait_for_every(
            &format!("B's received OrderPlaced >= {threshold} before the outage"),
            PHASE_TIMEOUT,
            Duration::from_millis(2),
            || db.incoming_count(None, Some("OrderPlaced")),
            |h| *h >= threshold,
        )
        .await;

    // ---- the outage ------------------------------------------------------------
    let (mark_a, mark_b) = (pair.a.log_mark(), pair.b.log_mark());
    let outage = BrokerOutage::begin();
    let down = outage.stopped_at;
    assert!(
        !broker_answers().await,
        "the broker still takes connections"
    );
    let pa_down = da.progress().await.unwrap();
    let pb_down = db.progress().await.unwrap();
    println!(
        "[outage] broker stopped at {:.1?}: B had {} OrderPlaced ({} handled) of {N}; A handled {}, outgoing {}",
        started.elapsed(),
        pb_down.of_type("OrderPlaced"),
        pb_down.get("OrderPlaced", "handled"),
        pa_down.get("PlaceOrder", "handled"),
        pa_down.outgoing
    );
    // Whether orders of the first part were still in flight when the broker
    // went depends on the hosts' speed against `rabbitmqctl stop_app`'s
    // (fast hosts drain 7,500 orders before it returns); the orders sent
    // during the outage below are in flight either way.
    if pb_down.of_type("OrderPlaced") >= BEFORE as i64 {
        println!(
            "[outage] every order of the first part had reached B before the broker stopped; only those sent during the outage are in flight"
        );
    }
    // The stream goes on: the rest reaches A during the outage.
    pair.a
        .send_file("PlaceOrder", &bodies(BEFORE..N))
        .assert_sent(N - BEFORE);
    let lost = pair
        .b
        .wait_for_log(
            "B's listener to notice the broker is gone",
            mark_b,
            &[LISTENER_LOST],
            OUTAGE.saturating_sub(down.elapsed()),
        )
        .await;
    println!("[outage] B noticed: {lost}");
    assert!(
        lost.contains("WARN"),
        "a lost connection is a warning: {lost}"
    );
    let open = pair
        .a
        .wait_for_log(
            "A's breaker to open during the outage",
            mark_a,
            &[CIRCUIT_OPEN],
            OUTAGE.saturating_sub(down.elapsed()),
        )
        .await;
    println!("[outage] A's breaker opened: {open}");
    assert!(
        open.contains("WARN"),
        "the breaker opening is a warning: {open}"
    );

    // What was in flight when the broker went is in B's inbox by now; from
    // here nothing can arrive until the broker is back.
    tokio::time::sleep(IN_FLIGHT_GRACE.saturating_sub(down.elapsed())).await;
    let pb_mid = db.progress().await.unwrap();
    // Hold the outage for its full length; both hosts stay up.
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    pair.a.assert_alive("at the end of the outage");
    pair.b.assert_alive("at the end of the outage");
    let pa_end = da.progress().await.unwrap();
    let pb_end = db.progress().await.unwrap();
    println!(
        "[outage] end after {:.1?}: A handled {} (was {}), outgoing {} (was {}); \
         B OrderPlaced rows {} at +{IN_FLIGHT_GRACE:?}, {} now",
        down.elapsed(),
        pa_end.get("PlaceOrder", "handled"),
        pa_down.get("PlaceOrder", "handled"),
        pa_end.outgoing,
        pa_down.outgoing,
        pb_mid.of_type("OrderPlaced"),
        pb_end.of_type("OrderPlaced"),
    );
    assert_eq!(
        pb_end.of_type("OrderPlaced"),
        pb_mid.of_type("OrderPlaced"),
        "B received messages while the broker was down"
    );
    assert!(
        pa_end.outgoing > pa_down.outgoing
            && pa_end.get("PlaceOrder", "handled") > pa_down.get("PlaceOrder", "handled"),
        "A kept handling during the outage and held the new OrderPlaced in outgoing: \
         before {pa_down:?}, after {pa_end:?}"
    );
    assert_eq!(
        count_lines(&pair.a, mark_a, &[CIRCUIT_CLOSED]),
        0,
        "A's breaker closed while the broker was down"
    );

    // ---- the broker is back ----------------------------------------------------
    let (back_a, back_b) = (pair.a.log_mark(), pair.b.log_mark());
    let was_down = outage.end();
    let restarted = Instant::now();
    println!("[outage] broker back after {was_down:.1?} down");
    assert!(was_down >= OUTAGE, "the outage lasted only {was_down:?}");
    let consuming = wait_consuming(&pair.b, &pair.queue, back_b).await;
    println!(
        "[outage] B consuming again (seen {:.1?} after the broker answered): {consuming}",
        restarted.elapsed()
    );
    let closed = pair
        .a
        .wait_for_log(
            "A's breaker to close once the broker is back",
            back_a,
            &[CIRCUIT_CLOSED],
            START_TIMEOUT,
        )
        .await;
    println!(
        "[outage] A's breaker closed (seen {:.1?} after the broker answered): {closed}",
        restarted.elapsed()
    );
    let reconnects_b = count_lines(&pair.b, mark_b, &[LISTENER_LOST]);
    let failures_a = count_lines(&pair.a, mark_a, &[SEND_FAILED]);
    println!(
        "[outage] B's listener reconnect warnings {reconnects_b}; A's failed sends {failures_a}, \
         breaker openings {}",
        count_lines(&pair.a, mark_a, &[CIRCUIT_OPEN])
    );

    settle_and_check(&pair, &amqp, "broker stopped 10 s", started).await;
    assert_eq!(
        count_lines(&pair.a, back_a, &[CIRCUIT_OPEN]),
        0,
        "A's breaker opened again after the broker came back"
    );
    amqp.cleanup().await.unwrap();
    println!("[outage] {:.1?} in all", started.elapsed());
}
