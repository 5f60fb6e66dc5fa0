//! [`AsbDouble`]: the Azure Service Bus test double (`tests/asb/asb_double.py`,
//! Python on Debian's qpid-proton) as a child process, for the suites that
//! run the host's AMQP 1.0 transport against Service Bus semantics: CBS
//! put-token with SAS tokens, peek-lock with lock tokens and
//! `x-opt-locked-until`, lock expiry and renewal (`$management`),
//! abandon / dead-letter outcomes, `$DeadLetterQueue`, scheduled messages,
//! topics with subscriptions. Its control port answers `GET /state`,
//! `GET /messages?entity=E`, `POST /send`, `POST /reject-sends` and
//! `POST /disconnect` ([`AsbDouble::state`], [`AsbDouble::messages`],
//! [`AsbDouble::send`], [`AsbDouble::reject_sends`],
//! [`AsbDouble::disconnect`]); `tests/asb/README.md` has the JSON shapes.
//!
//! [`amqp_client`] runs `tests/asb/amqp_client.py`, a plain AMQP 1.0 client
//! (send a file of bodies, receive N as JSON lines) for RabbitMQ's AMQP 1.0
//! plugin and for the double ([`AsbDouble::sas_args`] adds its CBS
//! credentials).
//!
//! Both run on `/usr/bin/python3` (Debian's, where python3-qpid-proton
//! installs). A missing proton panics with the install command, never a
//! silent pass. The double is killed when the [`AsbDouble`] is dropped; if
//! the test is panicking then, the tail of its stderr is printed.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::free_port;
use crate::http_client::request;
use crate::workspace_root;

/// The interpreter python3-qpid-proton installs for.
pub const PYTHON: &str = "/usr/bin/python3";
/// How long the double may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of one double; [`Default`]: 5 s locks, 10 deliveries, no topics.
#[derive(Debug, Clone)]
pub struct AsbOptions {
    /// How long a peek-lock lasts (`--lock-ms`).
    pub lock_ms: u64,
    /// Deliveries before a message is dead-lettered with
    /// `MaxDeliveryCountExceeded` (`--max-delivery-count`).
    pub max_delivery_count: u32,
    /// Topics and their subscriptions (`--topic TOPIC:sub1,sub2`).
    pub topics: Vec<(String, Vec<String>)>,
}

impl Default for AsbOptions {
    fn default() -> Self {
        AsbOptions {
            lock_ms: 5000,
            max_delivery_count: 10,
            topics: Vec::new(),
        }
    }
}

/// A running double; see the module docs.
#[derive(Debug)]
pub struct AsbDouble {
    /// AMQP 1.0 on 127.0.0.1 (plain TCP, SASL ANONYMOUS or PLAIN, then CBS).
    pub port: u16,
    /// The control HTTP server on 127.0.0.1.
    pub control_port: u16,
    /// The namespace host a token's audience must name
    /// (`sb://NAMESPACE/ENTITY`).
    pub namespace: String,
    /// The SAS key name and key the double checks signatures with.
    pub key_name: String,
    pub key: String,
    child: Child,
    stderr: fs::File,
}

/// `tests/asb/NAME` in the workspace.
pub fn asb_script(name: &str) -> PathBuf {
    workspace_root().join("tests").join("asb").join(name)
}

/// Panics, naming the install command, unless `/usr/bin/python3` imports
/// proton (checked once per process).
pub fn require_proton() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let verdict = CHECKED.get_or_init(|| {
        match Command::new(PYTHON)
            .args(["-c", "import proton"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
            Err(e) => Err(format!("cannot run {PYTHON}: {e}")),
        }
    });
    if let Err(why) = verdict {
        panic!(
            "{PYTHON} cannot import proton ({why}): the Service Bus double and the AMQP 1.0 \
             client need Debian's qpid-proton: apt-get install -y python3-qpid-proton"
        );
    }
}

/// Runs `tests/asb/amqp_client.py ARGS` to the end (`send`, `receive`,
/// `declare-queue`; see tests/asb/README.md). It blocks: from async code
/// call it in `tokio::task::spawn_blocking`. The client bounds its own waits
/// (`--op-timeout-s`, `receive --timeout-s`).
pub fn amqp_client(args: &[&str]) -> Output {
    require_proton();
    let script = asb_script("amqp_client.py");
    Command::new(PYTHON)
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {PYTHON} {} {args:?}: {e}", script.display()))
}

/// The events of `kind` in a [`AsbDouble::state`] answer.
pub fn events_of(state: &Value, kind: &str) -> Vec<Value> {
    state["events"]
        .as_array()
        .map(|evs| evs.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// One entity's counters in a [`AsbDouble::state`] answer (`Value::Null`
/// when the double has not seen it).
pub fn entity_of<'a>(state: &'a Value, entity: &str) -> &'a Value {
    &state["entities"][entity]
}

impl AsbDouble {
    /// Starts the double on free ports and waits for its `ready` line
    /// (20 s); panics with its stderr when it does not come.
    pub fn start(opts: AsbOptions) -> AsbDouble {
        require_proton();
        let port = free_port();
        let control_port = free_port();
        let namespace = "jasper-test.servicebus.windows.net".to_owned();
        let key_name = "RootManageSharedAccessKey".to_owned();
        let key = format!("{}=", uuid::Uuid::new_v4().simple());
        let script = asb_script("asb_double.py");
        let mut args = vec![
            script.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--control-port".into(),
            control_port.to_string(),
            "--namespace".into(),
            namespace.clone(),
            "--key-name".into(),
            key_name.clone(),
            "--key".into(),
            key.clone(),
            "--lock-ms".into(),
            opts.lock_ms.to_string(),
            "--max-delivery-count".into(),
            opts.max_delivery_count.to_string(),
        ];
        for (topic, subs) in &opts.topics {
            args.push("--topic".into());
            args.push(format!("{topic}:{}", subs.join(",")));
        }
        let stderr = tempfile::tempfile().expect("temp file for the double's stderr");
        let mut child = Command::new(PYTHON)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().expect("clone the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {PYTHON} {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("the double's stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the first line, then drains stdout until the double exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let mut double = AsbDouble {
            port,
            control_port,
            namespace,
            key_name,
            key,
            child,
            stderr,
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) if line.trim() == "ready" => double,
            other => {
                let _ = double.child.kill();
                let _ = double.child.wait();
                panic!(
                    "the Service Bus double did not print `ready` within {READY_TIMEOUT:?} (got \
                     {other:?}).\ncommand: {PYTHON} {}\nstderr:\n{}",
                    args.join(" "),
                    double.stderr_tail(60)
                );
            }
        }
    }

    /// `amqp://127.0.0.1:PORT` (no TLS, SASL ANONYMOUS).
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// `sb://NAMESPACE/ENTITY`: the audience of a token for `entity`.
    pub fn audience(&self, entity: &str) -> String {
        format!("sb://{}/{}", self.namespace, entity.trim_matches('/'))
    }

    /// `--namespace NS --sas-key-name NAME --sas-key KEY`, for [`amqp_client`].
    pub fn sas_args(&self) -> Vec<String> {
        vec![
            "--namespace".into(),
            self.namespace.clone(),
            "--sas-key-name".into(),
            self.key_name.clone(),
            "--sas-key".into(),
            self.key.clone(),
        ]
    }

    /// The last `n` lines of the double's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let mut f = match self.stderr.try_clone() {
            Ok(f) => f,
            Err(e) => return format!("(stderr unreadable: {e})"),
        };
        let mut s = String::new();
        if f.seek(SeekFrom::Start(0)).is_err() || f.read_to_string(&mut s).is_err() {
            return "(stderr unreadable)".to_owned();
        }
        crate::tail(&s, n)
    }

    /// A control request; the JSON answer, or a panic naming it.
    async fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let a = request(
            self.control_port,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Service Bus double: {method} {path}: {e}\nstderr:\n{}",
                self.stderr_tail(40)
            )
        });
        assert_eq!(
            a.status,
            200,
            "Service Bus double: {method} {path} answered {}: {}",
            a.status,
            a.text()
        );
        a.json().unwrap_or_else(|e| {
            panic!(
                "Service Bus double: {method} {path}: not JSON ({e}): {}",
                a.text()
            )
        })
    }

    /// `GET /state`: `{"entities": {NAME: {...}}, "events": [...], "connections": n}`.
    pub async fn state(&self) -> Value {
        self.control("GET", "/state", None).await
    }

    /// `GET /state?kind=K1,K2`: the same with only those events.
    pub async fn state_with_events(&self, kinds: &[&str]) -> Value {
        self.control("GET", &format!("/state?kind={}", kinds.join(",")), None)
            .await
    }

    /// `POST /send`: enqueues `messages` (a JSON array of
    /// `{"body", "properties", "application_properties",
    /// "message_annotations"}`) on `entity` as if a client had sent them.
    pub async fn send(&self, entity: &str, messages: Value) {
        let v = self
            .control(
                "POST",
                "/send",
                Some(&json!({"entity": entity, "messages": messages})),
            )
            .await;
        assert!(v["enqueued"].is_u64(), "POST /send answered {v}");
    }

    /// `GET /messages?entity=E`: the messages `entity` holds now (active,
    /// scheduled and locked; `E/$DeadLetterQueue` for its dead letters).
    pub async fn messages(&self, entity: &str) -> Vec<Value> {
        let v = self
            .control(
                "GET",
                &format!("/messages?entity={}", query_escape(entity)),
                None,
            )
            .await;
        match v {
            Value::Array(a) => a,
            other => panic!("GET /messages answered {other}"),
        }
    }

    /// `POST /reject-sends`: the next `count` transfers clients send to
    /// `entity` are settled Rejected with `condition` and `description`
    /// (and not stored).
    pub async fn reject_sends(&self, entity: &str, count: u32, condition: &str, description: &str) {
        self.control(
            "POST",
            "/reject-sends",
            Some(
                &json!({"entity": entity, "count": count, "condition": condition,
                         "description": description}),
            ),
        )
        .await;
    }

    /// `POST /disconnect`: closes every client connection with
    /// `amqp:connection:forced`; how many were closed.
    pub async fn disconnect(&self) -> u64 {
        let v = self.control("POST", "/disconnect", None).await;
        v["closed"].as_u64().unwrap_or(0)
    }
}

impl Drop for AsbDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- Service Bus double (port {}, control {}) stderr ---\n{}",
                self.port,
                self.control_port,
                self.stderr_tail(40)
            );
        }
    }
}

/// Percent-escapes a query value (entity names hold `/` and `$`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escape_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(
            query_escape("orders/$DeadLetterQueue"),
            "orders%2F%24DeadLetterQueue"
        );
        assert_eq!(query_escape("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn events_of_filters_by_kind() {
        let s =
            json!({"events": [{"kind": "put-token"}, {"kind": "complete"}, {"kind": "put-token"}]});
        assert_eq!(events_of(&s, "put-token").len(), 2);
        assert!(events_of(&json!({}), "x").is_empty());
    }
}
