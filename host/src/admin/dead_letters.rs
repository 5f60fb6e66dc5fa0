//! The dead-letter page on the admin endpoint: `GET /dead-letters` lists
//! them (filters: message type, error kind, failed within the last N
//! minutes), `GET /dead-letters/{id}` shows one (error, headers, body), and
//! each has Replay and Purge buttons (`POST /dead-letters/{id}/replay`,
//! `/purge`). Plain HTML forms, no script. The same `[admin] token` guards
//! it: as a bearer header, or as the cookie `POST /login` sets from the
//! sign-in form (HttpOnly, SameSite=Strict, so another site cannot make a
//! browser replay or purge).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::info;
use uuid::Uuid;

use crate::cli::shown::MessageShown;
use crate::envelope::{Envelope, now_ms};
use crate::store::{DeadLetter, MessageStore, Selection};

/// The cookie the sign-in form sets.
const COOKIE_NAME: &str = "jasper_admin";
/// Dead letters read per page view (oldest first from the store; filtered here).
const READ_LIMIT: usize = 10_000;
/// Rows shown at most.
const SHOW_LIMIT: usize = 500;

/// What the page needs.
#[derive(Debug)]
pub struct DeadLetterPage {
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) token: Option<String>,
    /// Woken after a replay, so the worker claims the messages at once.
    pub(crate) wake: Arc<Notify>,
}

/// `?type=&kind=&within=&done=` of the list.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Filter {
    #[serde(rename = "type")]
    message_type: String,
    kind: String,
    /// Minutes; empty: any time.
    within: String,
    /// What the last action did (shown once).
    done: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    token: String,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a query value.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} - jasper-host</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}}\
         pre{{background:#f4f4f4;padding:.5em;white-space:pre-wrap}}.done{{background:#dfd;padding:.5em}}\
         form.inline{{display:inline}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    )
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        page(title, body),
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// Whether the request carries the token (bearer header or cookie).
fn signed_in(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return false };
    if super::ingress::authorize(Some(token), headers).is_ok() {
        return true;
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE_NAME && super::ingress::same(v.as_bytes(), token.as_bytes()))
}

/// The sign-in form (or, without a token configured, why there is none).
fn sign_in(token: Option<&str>, wrong: bool) -> Response {
    if token.is_none() {
        return html(
            StatusCode::FORBIDDEN,
            "Dead letters",
            "<p>This page is off: set <code>[admin] token</code> in the config to enable it.</p>",
        );
    }
    let note = if wrong {
        "<p class=\"error\">That token is not the one configured.</p>"
    } else {
        ""
    };
    html(
        StatusCode::UNAUTHORIZED,
        "Sign in",
        &format!(
            "{note}<form method=\"post\" action=\"/login\"><label>Admin token \
             <input type=\"password\" name=\"token\" autofocus></label> \
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>"
        ),
    )
}

/// `POST /login`: the cookie, then the list.
pub(crate) async fn login(
    State(p): State<Arc<DeadLetterPage>>,
    Form(form): Form<Login>,
) -> Response {
    let Some(token) = p.token.as_deref() else {
        return sign_in(None, false);
    };
    if !super::ingress::same(form.token.trim().as_bytes(), token.as_bytes()) {
        return sign_in(Some(token), true);
    }
    let mut r = see_other("/dead-letters");
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

fn matches(d: &DeadLetter, f: &Filter, now: i64) -> bool {
    let within = f.within.trim().parse::<i64>().ok();
    (f.message_type.is_empty() || d.message_type == f.message_type)
        && (f.kind.is_empty() || d.error_kind.as_str() == f.kind)
        && within.is_none_or(|m| d.failed_at >= now.saturating_sub(m.saturating_mul(60_000)))
}

fn store_error(e: &crate::store::StoreError) -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Dead letters",
        &format!(
            "<p>The store did not answer: {}</p>",
            esc(&crate::error_chain(e))
        ),
    )
}

/// `GET /dead-letters`.
pub(crate) async fn list(
    State(p): State<Arc<DeadLetterPage>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Response {
    if !signed_in(p.token.as_deref(), &headers) {
        return sign_in(p.token.as_deref(), false);
    }
    let all = match p.store.dead_letters(READ_LIMIT).await {
        Ok(all) => all,
        Err(e) => return store_error(&e),
    };
    let now = now_ms();
    let shown: Vec<&DeadLetter> = all.iter().rev().filter(|d| matches(d, &f, now)).collect();
    let mut body = String::new();
    if !f.done.is_empty() {
        let _ = write!(body, "<p class=\"done\" id=\"done\">{}</p>", esc(&f.done));
    }
    let mut kinds: Vec<&str> = all.iter().map(|d| d.error_kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let options: String = kinds
        .iter()
        .map(|k| {
            let sel = if *k == f.kind { " selected" } else { "" };
            format!("<option value=\"{0}\"{sel}>{0}</option>", esc(k))
        })
        .collect();
    let within: String = [
        ("", "any time"),
        ("60", "last hour"),
        ("1440", "last day"),
        ("10080", "last week"),
    ]
    .iter()
    .map(|(v, label)| {
        let sel = if *v == f.within { " selected" } else { "" };
        format!("<option value=\"{v}\"{sel}>{label}</option>")
    })
    .collect();
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/dead-letters\" id=\"filter\">\
         <label>Type <input name=\"type\" value=\"{t}\"></label> \
         <label>Kind <select name=\"kind\"><option value=\"\">any</option>{options}</select></label> \
         <label>Failed <select name=\"within\">{within}</select></label> \
         <button type=\"submit\">Filter</button></form>\
         <p id=\"count\">{n} of {total} dead letter(s){more}</p>",
        t = esc(&f.message_type),
        n = shown.len().min(SHOW_LIMIT),
        total = all.len(),
        more = if shown.len() > SHOW_LIMIT {
            " (the newest shown)"
        } else {
            ""
        },
    );
    if !shown.is_empty() {
        body.push_str(
            "<table><tr><th>Failed at</th><th>Type</th><th>Kind</th><th>Error</th>\
             <th>Attempts</th><th>Queue</th><th></th></tr>",
        );
        for d in shown.iter().take(SHOW_LIMIT) {
            let _ = write!(
                body,
                "<tr data-id=\"{id}\"><td>{at}</td><td>{t}</td><td class=\"kind\">{k}</td>\
                 <td>{e}</td><td>{a}</td><td>{q}</td><td><a href=\"/dead-letters/{id}\">Inspect</a> {buttons}</td></tr>",
                id = d.id,
                at = when(d.failed_at),
                t = esc(&d.message_type),
                k = esc(d.error_kind.as_str()),
                e = esc(&d.error_message),
                a = d.attempts,
                q = esc(&d.received_at),
                buttons = buttons(d),
            );
        }
        body.push_str("</table>");
    }
    html(StatusCode::OK, "Dead letters", &body)
}

fn buttons(d: &DeadLetter) -> String {
    let replay = if d.replayable {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/dead-letters/{}/replay\">\
             <button type=\"submit\" class=\"replay\">Replay</button></form>",
            d.id
        )
    } else {
        String::new()
    };
    format!(
        "{replay}<form class=\"inline\" method=\"post\" action=\"/dead-letters/{}/purge\">\
         <button type=\"submit\" class=\"purge\">Purge</button></form>",
        d.id
    )
}

/// `GET /dead-letters/{id}`.
pub(crate) async fn show(
    State(p): State<Arc<DeadLetterPage>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if !signed_in(p.token.as_deref(), &headers) {
        return sign_in(p.token.as_deref(), false);
    }
    let d = match p.store.dead_letter(id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return html(
                StatusCode::NOT_FOUND,
                "Dead letter",
                &format!(
                    "<p>No dead letter {id}. <a href=\"/dead-letters\">All dead letters</a></p>"
                ),
            );
        }
        Err(e) => return store_error(&e),
    };
    let message = match Envelope::decode(&d.body) {
        Ok(env) => serde_json::to_string_pretty(&MessageShown::of(&env))
            .unwrap_or_else(|e| format!("cannot show the message: {e}")),
        Err(e) => format!(
            "the stored envelope ({} bytes) cannot be decoded: {}",
            d.body.len(),
            crate::error_chain(&e)
        ),
    };
    let body = format!(
        "<p><a href=\"/dead-letters\">All dead letters</a></p><table>\
         <tr><th>Id</th><td>{id}</td></tr><tr><th>Type</th><td>{t}</td></tr>\
         <tr><th>Kind</th><td id=\"kind\">{k}</td></tr><tr><th>Error</th><td id=\"error\">{e}</td></tr>\
         <tr><th>Attempts</th><td>{a}</td></tr><tr><th>Failed at</th><td>{at}</td></tr>\
         <tr><th>Queue</th><td>{q}</td></tr><tr><th>Source</th><td>{s}</td></tr></table>\
         <p>{buttons}</p><h2>Message</h2><pre id=\"message\">{m}</pre>",
        id = d.id,
        t = esc(&d.message_type),
        k = esc(d.error_kind.as_str()),
        e = esc(&d.error_message),
        a = d.attempts,
        at = when(d.failed_at),
        q = esc(&d.received_at),
        s = esc(d.source.as_deref().unwrap_or("")),
        buttons = buttons(&d),
        m = esc(&message),
    );
    html(StatusCode::OK, "Dead letter", &body)
}

/// What the Replay and Purge buttons do.
#[derive(Debug, Clone, Copy)]
enum Act {
    Replay,
    Purge,
}

/// `POST /dead-letters/{id}/replay`.
pub(crate) async fn replay(
    State(p): State<Arc<DeadLetterPage>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    act(&p, &headers, id, Act::Replay).await
}

/// `POST /dead-letters/{id}/purge`.
pub(crate) async fn purge(
    State(p): State<Arc<DeadLetterPage>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    act(&p, &headers, id, Act::Purge).await
}

/// Replay or purge one dead letter, log it, and go back to the list with
/// what came of it.
async fn act(p: &DeadLetterPage, headers: &HeaderMap, id: Uuid, what: Act) -> Response {
    if !signed_in(p.token.as_deref(), headers) {
        return sign_in(p.token.as_deref(), false);
    }
    let which = Selection::Ids(vec![id]);
    let done = match what {
        Act::Replay => p.store.replay_dead_letters(&which).await,
        Act::Purge => p.store.purge_dead_letters(&which).await,
    };
    let n = match done {
        Ok(n) => n,
        Err(e) => return store_error(&e),
    };
    let done = match (what, n) {
        (Act::Replay, 1) => {
            info!(dead_letter = %id, event = %"dead-letter-replayed", "a dead letter was replayed from the admin page");
            p.wake.notify_one();
            format!("Replayed {id}: it is back in the inbox.")
        }
        (Act::Replay, _) => {
            format!("{id} was not replayed (gone, not replayable, or still in the inbox).")
        }
        (Act::Purge, 1) => {
            info!(dead_letter = %id, event = %"dead-letter-purged", "a dead letter was purged from the admin page");
            format!("Purged {id}.")
        }
        (Act::Purge, _) => format!("{id} was not there any more."),
    };
    see_other(&format!("/dead-letters?done={}", q(&done)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_queries_encoded() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(q("Replayed a b: ok."), "Replayed%20a%20b%3A%20ok.");
    }

    #[test]
    fn the_cookie_or_the_bearer_header_signs_in() {
        let mut h = HeaderMap::new();
        assert!(!signed_in(Some("t0k"), &h));
        h.insert(COOKIE, HeaderValue::from_static("a=b; jasper_admin=t0k"));
        assert!(signed_in(Some("t0k"), &h));
        assert!(!signed_in(Some("other"), &h));
        assert!(!signed_in(None, &h), "no token configured: nobody");
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(signed_in(Some("t0k"), &h));
    }
}
