//! The per-message totals a handler call may make the host hold before its
//! commit (`[plugins] max_state_keys`, `max_state_bytes`, `max_sends`,
//! `max_send_bytes`), and the running tally of one call against them. Owns
//! the counting and the error text; not the per-item caps (one key, one
//! value, one body: `host_state`), and not what a call past a bound becomes
//! (`handling::policy` dead-letters it at once as `limit`).

use std::fmt;

use crate::config::PluginsConfig;

/// The configured totals, per handler call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Distinct state keys written (put or delete).
    pub max_state_keys: u64,
    /// Bytes of keys and values written, as held at the end of the call.
    pub max_state_bytes: u64,
    /// Messages sent, published or scheduled, every destination copy counted.
    pub max_sends: u64,
    /// Body bytes of those messages, every copy counted.
    pub max_send_bytes: u64,
}

impl Bounds {
    pub(crate) fn from_config(cfg: &PluginsConfig) -> Self {
        Bounds {
            max_state_keys: cfg.max_state_keys,
            max_state_bytes: cfg.max_state_bytes,
            max_sends: cfg.max_sends,
            max_send_bytes: cfg.max_send_bytes,
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::from_config(&PluginsConfig::default())
    }
}

/// Which bound was passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    StateKeys,
    StateBytes,
    Sends,
    SendBytes,
}

impl Bound {
    /// The config key that sets it.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Bound::StateKeys => "plugins.max_state_keys",
            Bound::StateBytes => "plugins.max_state_bytes",
            Bound::Sends => "plugins.max_sends",
            Bound::SendBytes => "plugins.max_send_bytes",
        }
    }
}

/// A call went past a bound: which one, its value, and what the call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exceeded {
    pub bound: Bound,
    pub limit: u64,
    pub actual: u64,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Exceeded {
            bound,
            limit,
            actual,
        } = self;
        let key = bound.key();
        match bound {
            Bound::StateKeys => write!(
                f,
                "state writes exceeded {key} = {limit} (wrote {actual} keys)"
            ),
            Bound::StateBytes => write!(
                f,
                "state writes exceeded {key} = {limit} (wrote {actual} bytes of keys and values)"
            ),
            Bound::Sends => write!(
                f,
                "sends exceeded {key} = {limit} (sent {actual} messages, every destination copy counted)"
            ),
            Bound::SendBytes => write!(
                f,
                "sends exceeded {key} = {limit} (sent {actual} body bytes, every destination copy counted)"
            ),
        }
    }
}

impl std::error::Error for Exceeded {}

/// What one call has made the host hold so far. A write or send that would
/// pass a bound is not counted (and the caller does not keep it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Usage {
    bounds: Bounds,
    state_keys: u64,
    state_bytes: u64,
    sends: u64,
    send_bytes: u64,
}

fn n(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn check(bound: Bound, limit: u64, actual: u64) -> Result<u64, Exceeded> {
    if actual > limit {
        return Err(Exceeded {
            bound,
            limit,
            actual,
        });
    }
    Ok(actual)
}

impl Usage {
    pub(crate) fn new(bounds: Bounds) -> Self {
        Usage {
            bounds,
            ..Usage::default()
        }
    }

    /// A put (`value_len`) or delete (0) of a key of `key_len` bytes;
    /// `held` is what this call already holds for the same key (key plus
    /// value bytes), `None` when the call has not written it yet. Writing a
    /// key again replaces its value, so only the last value counts.
    pub(crate) fn state_write(
        &mut self,
        held: Option<usize>,
        key_len: usize,
        value_len: usize,
    ) -> Result<(), Exceeded> {
        let b = self.bounds;
        let keys = self.state_keys.saturating_add(u64::from(held.is_none()));
        let bytes = self
            .state_bytes
            .saturating_sub(n(held.unwrap_or(0)))
            .saturating_add(n(key_len))
            .saturating_add(n(value_len));
        let keys = check(Bound::StateKeys, b.max_state_keys, keys)?;
        let bytes = check(Bound::StateBytes, b.max_state_bytes, bytes)?;
        self.state_keys = keys;
        self.state_bytes = bytes;
        Ok(())
    }

    /// `copies` messages (one per destination) with a body of `body_len` bytes each.
    pub(crate) fn send(&mut self, copies: usize, body_len: usize) -> Result<(), Exceeded> {
        let b = self.bounds;
        let sends = self.sends.saturating_add(n(copies));
        let bytes = self
            .send_bytes
            .saturating_add(n(copies).saturating_mul(n(body_len)));
        let sends = check(Bound::Sends, b.max_sends, sends)?;
        let bytes = check(Bound::SendBytes, b.max_send_bytes, bytes)?;
        self.sends = sends;
        self.send_bytes = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Usage {
        Usage::new(Bounds {
            max_state_keys: 2,
            max_state_bytes: 100,
            max_sends: 3,
            max_send_bytes: 30,
        })
    }

    #[test]
    fn state_keys_count_once_per_key_and_bytes_count_the_last_value() {
        let mut u = small();
        u.state_write(None, 10, 40).unwrap();
        // The same key again, bigger: replaces its 50 bytes.
        u.state_write(Some(50), 10, 80).unwrap();
        // Then smaller again: room for another key.
        u.state_write(Some(90), 10, 0).unwrap();
        u.state_write(None, 10, 70).unwrap();
        let e = u.state_write(None, 1, 0).unwrap_err();
        assert_eq!(
            e,
            Exceeded {
                bound: Bound::StateKeys,
                limit: 2,
                actual: 3
            }
        );
        assert_eq!(
            e.to_string(),
            "state writes exceeded plugins.max_state_keys = 2 (wrote 3 keys)"
        );
        let e = u.state_write(Some(80), 10, 81).unwrap_err();
        assert_eq!((e.bound, e.limit, e.actual), (Bound::StateBytes, 100, 101));
        assert!(
            e.to_string().contains("plugins.max_state_bytes = 100"),
            "{e}"
        );
        // A refused write is not counted.
        u.state_write(Some(80), 10, 80).unwrap();
    }

    #[test]
    fn sends_count_every_copy_and_its_body() {
        let mut u = small();
        u.send(2, 10).unwrap();
        let e = u.send(2, 1).unwrap_err();
        assert_eq!((e.bound, e.limit, e.actual), (Bound::Sends, 3, 4));
        assert_eq!(
            e.to_string(),
            "sends exceeded plugins.max_sends = 3 (sent 4 messages, every destination copy counted)"
        );
        let e = u.send(1, 11).unwrap_err();
        assert_eq!((e.bound, e.limit, e.actual), (Bound::SendBytes, 30, 31));
        assert!(e.to_string().contains("plugins.max_send_bytes = 30"), "{e}");
        u.send(1, 10).unwrap();
        // Nothing to destinations holds nothing.
        u.send(0, 1 << 30).unwrap();
    }
}
