//! Crash safety: 10,000 orders, the host SIGKILLed three times mid-stream,
//! then every effect must exist exactly once. One test per backend:
//! `sigkill_three_times_loses_and_duplicates_nothing::{sqlite,postgres,mysql}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use jasper_e2e::exactly_once::{check_orders_once, settled};
use jasper_e2e::kill::kill9_when;
use jasper_e2e::orders::bodies;
use jasper_e2e::{Backend, HostConfig, TestHost};

const N: usize = 10_000;
/// Every order is handled twice over: PlaceOrder (orders) and OrderPlaced (audit).
const TOTAL_HANDLED: i64 = 2 * N as i64;
/// Kill points, as a share of TOTAL_HANDLED.
const KILL_AT_PERCENT: [i64; 3] = [15, 45, 75];
/// How long after crossing each kill point the SIGKILL goes out. The handled
/// count moves in steps (one per committed batch), so crossing a point means
/// "a commit just finished"; these offsets land the kills at other phases of
/// the next batch (handlers running, effects being committed). The host is
/// checked to be still mid-stream after each kill either way.
const KILL_OFFSET_MS: [u64; 3] = [0, 23, 57];
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const FINAL_TIMEOUT: Duration = Duration::from_secs(600);

fn config(backend: Backend) -> HostConfig {
    HostConfig::on(backend)
        .keep_handled_ms(7 * 24 * 3600 * 1000)
        .stale_after_ms(2000)
        .heartbeat_ms(200)
}

jasper_e2e::per_backend!(sigkill_three_times_loses_and_duplicates_nothing => crash);

async fn crash(backend: Backend) {
    let host = TestHost::new(&["orders", "audit"], config(backend));
    let db = host.db();
    let bodies = bodies(0..N);

    // Half while the host is down, half while it is up.
    host.send_file("PlaceOrder", &bodies[..N / 2])
        .assert_sent(N / 2);
    host.spawn();
    host.send_file("PlaceOrder", &bodies[N / 2..])
        .assert_sent(N - N / 2);

    let started = Instant::now();
    for (k, pct) in KILL_AT_PERCENT.iter().enumerate() {
        let threshold = TOTAL_HANDLED * pct / 100;
        let handled = kill9_when(
            &host,
            &format!(
                "handled rows >= {threshold} ({pct}%) before kill #{}",
                k + 1
            ),
            PHASE_TIMEOUT,
            Duration::from_millis(5),
            || db.incoming_count(Some("handled"), None),
            threshold,
            Duration::from_millis(KILL_OFFSET_MS[k]),
        )
        .await;
        // Mid-stream means work was left when the host died.
        let p = db.progress().await.unwrap();
        let left = p.with_status("incoming");
        println!(
            "[{backend}] kill #{} at {:.1?}: handled {} when polled (threshold {threshold}), killed {} ms later; after kill: {} handled, {} incoming, {p:?}",
            k + 1,
            started.elapsed(),
            handled,
            KILL_OFFSET_MS[k],
            p.with_status("handled"),
            left
        );
        assert!(
            left > 0 && !settled(&p),
            "kill #{} did not happen mid-stream: the host had already finished ({p:?}); \
             the test cannot show crash safety this way",
            k + 1
        );
        host.spawn();
    }

    let p = host
        .wait_for(
            "all 10,000 orders and their OrderPlaced handled after the last restart",
            FINAL_TIMEOUT,
            || db.progress(),
            settled,
        )
        .await;
    println!("[{backend}] settled after {:.1?}: {p:?}", started.elapsed());
    host.assert_alive("after the last restart settled");

    // ---- checker ------------------------------------------------------------
    check_orders_once(
        &format!(
            "crash checker ({backend}, {}), {} restarts",
            host.store(),
            KILL_AT_PERCENT.len()
        ),
        &db,
        N,
        &p,
    )
    .await;

    let c = host.counts();
    assert_eq!(c.incoming, 0, "storage counts: {c:?}");
    assert_eq!(c.dead_letters, 0, "storage counts: {c:?}");
    assert_eq!(c.outgoing, 0, "storage counts: {c:?}");
    assert_eq!(c.scheduled, N as u64, "storage counts: {c:?}");
    assert_eq!(c.handled, TOTAL_HANDLED as u64, "storage counts: {c:?}");

    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}
