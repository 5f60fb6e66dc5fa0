//! Free TCP ports for listeners the suites must know before the host starts.

use std::fs;
use std::sync::Mutex;

/// Ports [`free_port`] handed out in this process.
static PORTS_GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A TCP port of 127.0.0.1 nothing listens on, for a host's `[[listen]]`.
/// It is taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so no outgoing connection
/// (of any process) is given it meanwhile and a connect to it while nobody
/// listens cannot end up connected to itself; never twice in one process;
/// checked free by binding it (the socket is closed again: the host binds it).
/// Falls back to a port the kernel picks when there is no room below the range.
pub fn free_port() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let mut given = PORTS_GIVEN.lock().expect("ports lock");
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let first = 10_000u16;
    if low > first + 1000 {
        let span = u32::from(low - first);
        // A random start, so test processes running side by side try different ports.
        let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
        for k in 0..span {
            let p = first + ((start + k) % span) as u16;
            if !given.contains(&p) && bindable(p) {
                given.push(p);
                return p;
            }
        }
    }
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().expect("local addr").port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
    panic!("free_port(): no free port found");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        for p in [a, b] {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .unwrap_or_else(|e| panic!("port {p} is not free: {e}"));
        }
        if let Ok(r) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let low: u16 = r.split_whitespace().next().unwrap().parse().unwrap();
            if low > 11_000 {
                assert!(a < low && b < low, "{a} {b} vs {low}");
            }
        }
    }
}
