//! [`Browser`]: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which `make browser` installs): a
//! `chromedriver` child on a free port, one session, and the few commands
//! the page tests use (open, find, type, click, read). Plain JSON over
//! HTTP with [`crate::http_client`]; the driver and the browser are killed
//! when the `Browser` is dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http_client::request;
use crate::{free_port, wait_until};

/// Where Debian puts them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a test waits for after a click
/// (a click that submits a form need not wait for the next page).
const SHOW_TIMEOUT: Duration = Duration::from_secs(20);

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// See the module docs.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser too; then the driver.
        let (port, session) = (self.port, self.session.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(request(
                    port,
                    "DELETE",
                    &format!("/session/{session}"),
                    &[],
                    b"",
                ));
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Start the driver and a headless session; panics naming what to
    /// install when Chromium or its driver is missing.
    pub async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (`make browser`, or \
                 apt-get install -y chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_until(
            "chromedriver answers",
            Duration::from_secs(30),
            || async { request(port, "GET", "/status", &[], b"").await },
            |a| a.status == 200,
        )
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        // The flags this machine's closed network needs (see the machine notes).
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps)).await;
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        b
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let a = request(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v = a
            .json()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {}", a.text()));
        assert_eq!(a.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Open `url` (waits for the page to load).
    pub async fn open(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})))
            .await;
    }

    /// The element `css` selects now, if there is one.
    async fn try_find(&self, css: &str) -> Option<String> {
        let a = request(
            self.port,
            "POST",
            &self.at("/element"),
            &[("Content-Type", "application/json")],
            json!({"using": "css selector", "value": css})
                .to_string()
                .as_bytes(),
        )
        .await
        .ok()?;
        if a.status != 200 {
            return None;
        }
        let v = a.json().ok()?;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// The element `css` selects, waiting for it to show (the page may be
    /// loading after a click); panics with the page's text when it does not.
    pub async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + SHOW_TIMEOUT;
        loop {
            if let Some(el) = self.try_find(css).await {
                return el;
            }
            if tokio::time::Instant::now() > deadline {
                let page = match self.try_find("body").await {
                    Some(body) => self.text_of(&body).await,
                    None => String::new(),
                };
                panic!("no element {css:?} on the page within {SHOW_TIMEOUT:?}:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the element `css` selects shows `needle` in its text;
    /// that text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + SHOW_TIMEOUT;
        loop {
            let text = match self.try_find(css).await {
                Some(el) => self.text_of(&el).await,
                None => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css:?} did not show {needle:?} within {SHOW_TIMEOUT:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the page's URL ends with `suffix`.
    pub async fn wait_for_url(&self, suffix: &str) {
        let deadline = tokio::time::Instant::now() + SHOW_TIMEOUT;
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page stayed at {url}, not …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text_of(&self, el: &str) -> String {
        let a = request(
            self.port,
            "GET",
            &self.at(&format!("/element/{el}/text")),
            &[],
            b"",
        )
        .await;
        a.ok()
            .and_then(|a| a.json().ok())
            .and_then(|v| v["value"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .call(
                "POST",
                &self.at("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    /// Type `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{el}/value")),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Click the element `css` selects (a submit waits for the next page).
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{el}/click")),
            Some(json!({})),
        )
        .await;
    }

    /// The visible text of the element `css` selects (waiting for it).
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.text_of(&el).await
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        let v = self.call("GET", &self.at("/url"), None).await;
        v.as_str().unwrap_or_default().to_owned()
    }
}
