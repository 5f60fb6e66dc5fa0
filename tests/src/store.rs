//! The store behind a test host, on any of the three backends: which backend
//! and where ([`Backend`], [`Store`]), direct SQL on it ([`Db`]), dropping it
//! at the end of a test ([`drop_store`], [`leftovers`]) and fresh databases
//! made with the database's own client ([`FreshDatabase`]).
//!
//! Servers: `JASPER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `JASPER_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/test`); `.ci/run` starts both.
//! Each test gets its own schema (PostgreSQL) or table prefix (MySQL/MariaDB)
//! named `t` + 12 hex digits, so tests run in parallel.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection as _, Row as _, ValueRef as _};

use crate::{CmdOut, wait_child};

/// How long connecting to a test server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one harness query may take (reads, cleanup DDL).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a database client tool (psql, createdb, mariadb) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The five tables of the message store, by their suffix.
pub const TABLES: [&str; 5] = ["incoming", "outgoing", "dead_letters", "nodes", "state"];

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A storage backend of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// The test server's URL (from the environment or the default); None for SQLite.
    pub fn server_url(self) -> Option<String> {
        let (var, default) = match self {
            Backend::Sqlite => return None,
            Backend::Postgres => (
                "JASPER_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            Backend::Mysql => ("JASPER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        Some(match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => default.to_owned(),
        })
    }

    /// The backend a `[storage] url` names (by its scheme).
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::Mysql),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A schema / table prefix of its own: `t` + 12 hex digits.
pub fn unique_schema() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Where a host's store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// A SQLite file; tables `{schema}_incoming`, ...
    Sqlite { path: PathBuf, schema: String },
    /// PostgreSQL; tables `{schema}.jasper_incoming`, ...
    Postgres { url: String, schema: String },
    /// MySQL/MariaDB; tables `{schema}_incoming`, ... in the URL's database.
    Mysql { url: String, schema: String },
}

impl Store {
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite { .. } => Backend::Sqlite,
            Store::Postgres { .. } => Backend::Postgres,
            Store::Mysql { .. } => Backend::Mysql,
        }
    }

    pub fn schema(&self) -> &str {
        match self {
            Store::Sqlite { schema, .. }
            | Store::Postgres { schema, .. }
            | Store::Mysql { schema, .. } => schema,
        }
    }

    /// The server URL (None for SQLite).
    pub fn url(&self) -> Option<&str> {
        match self {
            Store::Sqlite { .. } => None,
            Store::Postgres { url, .. } | Store::Mysql { url, .. } => Some(url),
        }
    }

    /// The table of `suffix` (`incoming`, `state`, ...), quoted for SQL.
    pub fn table(&self, suffix: &str) -> String {
        match self {
            Store::Sqlite { schema, .. } => format!("\"{schema}_{suffix}\""),
            Store::Postgres { schema, .. } => format!("\"{schema}\".\"jasper_{suffix}\""),
            Store::Mysql { schema, .. } => format!("`{schema}_{suffix}`"),
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Sqlite { path, schema } => {
                write!(f, "sqlite {} (prefix {schema}_)", path.display())
            }
            Store::Postgres { url, schema } => write!(f, "postgres {url} (schema {schema})"),
            Store::Mysql { url, schema } => write!(f, "mysql {url} (prefix {schema}_)"),
        }
    }
}

// ---------------------------------------------------------------------------
// Server URLs and client tools
// ---------------------------------------------------------------------------

/// The parts of `scheme://user[:password]@host[:port]/database` the client
/// tools need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    pub scheme: String,
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// `?...` including the `?`, or empty.
    pub query: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> anyhow::Result<ServerUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?} has no scheme://"))?;
        let (rest, query) = match rest.find('?') {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, String::new()),
        };
        let (auth, hostpart) = match rest.rfind('@') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => ("", rest),
        };
        let (user, password) = match auth.split_once(':') {
            Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
            None => (auth.to_owned(), None),
        };
        let (hostport, database) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let default_port = match Backend::of_url(url) {
            Some(Backend::Mysql) => 3306,
            _ => 5432,
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse()
                    .with_context(|| format!("port {p:?} of {url:?}"))?,
            ),
            None => (hostport.to_owned(), default_port),
        };
        Ok(ServerUrl {
            scheme: scheme.to_owned(),
            user,
            password,
            host,
            port,
            database: database.to_owned(),
            query,
        })
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> String {
        let auth = match (&self.user, &self.password) {
            (u, _) if u.is_empty() => String::new(),
            (u, None) => format!("{u}@"),
            (u, Some(p)) => format!("{u}:{p}@"),
        };
        format!(
            "{}://{auth}{}:{}/{database}{}",
            self.scheme, self.host, self.port, self.query
        )
    }

    /// `-h H -p P -U U` (psql, createdb, dropdb), password via PGPASSWORD.
    fn pg_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-h", &self.host, "-p", &self.port.to_string()]);
        if !self.user.is_empty() {
            c.args(["-U", &self.user]);
        }
        c.arg("-w"); // never prompt
        if let Some(p) = &self.password {
            c.env("PGPASSWORD", p);
        }
        c
    }

    /// `mariadb -h H -P P -u U` (password via MYSQL_PWD).
    fn mariadb_command(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.args([
            "--protocol=tcp",
            "-h",
            &self.host,
            "-P",
            &self.port.to_string(),
        ]);
        if !self.user.is_empty() {
            c.args(["-u", &self.user]);
        }
        if let Some(p) = &self.password {
            c.env("MYSQL_PWD", p);
        }
        c
    }
}

/// Runs a client tool with stdin from `stdin` (a file) or /dev/null, at most
/// `timeout`. Panics if it cannot be started or does not finish in time.
pub fn run_tool(mut cmd: Command, stdin: Option<&Path>, timeout: Duration) -> CmdOut {
    let shown = format!("{cmd:?}");
    let out = tempfile::NamedTempFile::new().expect("temp file for stdout");
    let err = tempfile::NamedTempFile::new().expect("temp file for stderr");
    cmd.stdout(out.reopen().expect("reopen stdout file"))
        .stderr(err.reopen().expect("reopen stderr file"));
    match stdin {
        Some(p) => {
            cmd.stdin(
                File::open(p).unwrap_or_else(|e| panic!("open {} for stdin: {e}", p.display())),
            );
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{shown}`: {e} (is the client installed?)"));
    let status = match wait_child(&mut child, timeout) {
        Ok(Some(st)) => st,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{shown}` did not finish within {timeout:?} ({other:?})");
        }
    };
    CmdOut {
        cmd: shown,
        status,
        stdout: fs::read_to_string(out.path()).unwrap_or_default(),
        stderr: fs::read_to_string(err.path()).unwrap_or_default(),
    }
}

/// Runs `fut` to completion on a runtime of its own in another thread: for
/// `Drop` and other sync code that may run inside (or while unwinding out of)
/// a test's runtime.
pub fn block_on_own_runtime<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime")
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A database of its own on the test server, created with the server's own
/// client (`createdb`, `mariadb -e 'CREATE DATABASE ...'`) and dropped on drop
/// (`dropdb --force`, `DROP DATABASE`). Declare it before the [`crate::TestHost`]
/// that uses it, so the host (and its connections) go first.
#[derive(Debug)]
pub struct FreshDatabase {
    backend: Backend,
    server: ServerUrl,
    name: String,
    url: String,
}

impl FreshDatabase {
    /// Panics for SQLite (a fresh file needs no server) or if the client fails.
    pub fn create(backend: Backend) -> FreshDatabase {
        let server_url = backend
            .server_url()
            .unwrap_or_else(|| panic!("FreshDatabase: {backend} has no server"));
        let server = ServerUrl::parse(&server_url).expect("parse the test server URL");
        let name = format!(
            "jasper_e2e_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let out = match backend {
            Backend::Postgres => {
                let mut c = server.pg_command("createdb");
                c.arg(&name);
                run_tool(c, None, TOOL_TIMEOUT)
            }
            Backend::Mysql => {
                let mut c = server.mariadb_command();
                c.args(["-e", &format!("CREATE DATABASE `{name}`")]);
                run_tool(c, None, TOOL_TIMEOUT)
            }
            Backend::Sqlite => unreachable!(),
        };
        out.assert_success();
        let url = server.with_database(&name);
        FreshDatabase {
            backend,
            server,
            name,
            url,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the fresh database (for `[storage] url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies an SQL file with the database's own client:
    /// `psql -v ON_ERROR_STOP=1 -d NAME -f F` or `mariadb NAME < F`.
    pub fn apply_file(&self, file: &Path) -> CmdOut {
        match self.backend {
            Backend::Postgres => {
                let mut c = self.server.pg_command("psql");
                c.args(["-v", "ON_ERROR_STOP=1", "-d", &self.name, "-f"])
                    .arg(file);
                run_tool(c, None, TOOL_TIMEOUT)
            }
            Backend::Mysql => {
                let mut c = self.server.mariadb_command();
                c.arg(&self.name);
                run_tool(c, Some(file), TOOL_TIMEOUT)
            }
            Backend::Sqlite => unreachable!(),
        }
    }

    /// Names of the tables in the database (any schema but the system ones).
    pub fn tables(&self) -> Vec<String> {
        let (mut c, sql) = match self.backend {
            Backend::Postgres => (
                self.server.pg_command("psql"),
                "SELECT table_schema || '.' || table_name FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            ),
            Backend::Mysql => (
                self.server.mariadb_command(),
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE() ORDER BY 1",
            ),
            Backend::Sqlite => unreachable!(),
        };
        match self.backend {
            Backend::Postgres => c.args(["-At", "-d", &self.name, "-c", sql]),
            _ => c.args(["-N", "-B", &self.name, "-e", sql]),
        };
        let out = run_tool(c, None, TOOL_TIMEOUT);
        out.assert_success();
        out.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("e2e: keeping database {} ({})", self.name, self.url);
            return;
        }
        let out = match self.backend {
            Backend::Postgres => {
                let mut c = self.server.pg_command("dropdb");
                c.args(["--if-exists", "--force", &self.name]);
                run_tool(c, None, TOOL_TIMEOUT)
            }
            Backend::Mysql => {
                let mut c = self.server.mariadb_command();
                c.args(["-e", &format!("DROP DATABASE IF EXISTS `{}`", self.name)]);
                run_tool(c, None, TOOL_TIMEOUT)
            }
            Backend::Sqlite => return,
        };
        if !out.success() {
            let msg = format!(
                "e2e: could not drop the database {} it created:\n{}\n{}",
                self.name, out.stdout, out.stderr
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Direct SQL
// ---------------------------------------------------------------------------

/// A bind parameter of [`Db::query`] / [`Db::execute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
    Null,
}

impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Bind::Text(v.to_owned())
    }
}
impl From<String> for Bind {
    fn from(v: String) -> Self {
        Bind::Text(v)
    }
}
impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Bind::Int(v)
    }
}
impl From<Vec<u8>> for Bind {
    fn from(v: Vec<u8>) -> Self {
        Bind::Bytes(v)
    }
}

/// How to read a result column of [`Db::query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    /// Any integer type (and booleans, as 0/1).
    Int,
    Text,
    Bytes,
}

/// A value read by [`Db::query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    pub fn int(&self) -> anyhow::Result<i64> {
        match self {
            Cell::Int(i) => Ok(*i),
            other => bail!("expected an integer, got {other:?}"),
        }
    }
    pub fn text(&self) -> anyhow::Result<String> {
        match self {
            Cell::Text(s) => Ok(s.clone()),
            other => bail!("expected text, got {other:?}"),
        }
    }
    pub fn opt_text(&self) -> anyhow::Result<Option<String>> {
        match self {
            Cell::Null => Ok(None),
            other => other.text().map(Some),
        }
    }
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Cell::Bytes(b) => Ok(b.clone()),
            other => bail!("expected bytes, got {other:?}"),
        }
    }
}

enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
    Mysql(MySqlConnection),
}

/// The same code for each kind of connection (each arm is type-checked for
/// its driver).
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:block) => {
        match $conn {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
            Conn::Mysql($c) => $body,
        }
    };
}

macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
                Bind::Bytes(v) => q.bind(v.clone()),
                Bind::Null => q.bind(None::<i64>),
            };
        }
        q
    }};
}

macro_rules! read_cell {
    ($row:expr, $i:expr, $col:expr) => {{
        let r = $row;
        let i: usize = $i;
        if r.try_get_raw(i)?.is_null() {
            Cell::Null
        } else {
            match $col {
                Col::Int => Cell::Int(
                    r.try_get::<i64, _>(i)
                        .or_else(|_| r.try_get::<i32, _>(i).map(i64::from))
                        .or_else(|_| r.try_get::<i16, _>(i).map(i64::from))
                        .or_else(|_| r.try_get::<i8, _>(i).map(i64::from))
                        .or_else(|_| r.try_get::<bool, _>(i).map(i64::from))?,
                ),
                Col::Text => Cell::Text(r.try_get::<String, _>(i)?),
                Col::Bytes => Cell::Bytes(r.try_get::<Vec<u8>, _>(i)?),
            }
        }
    }};
}

/// Direct SQL on a host's store, any backend. Every call opens its own
/// connection (SQLite: read-only unless it writes), so no read snapshot
/// outlives a query. SQL is written with `?` placeholders (turned into `$n`
/// for PostgreSQL); table names come from [`Db::table`].
#[derive(Clone, Debug)]
pub struct Db {
    store: Store,
}

/// One state row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRow {
    pub value: Vec<u8>,
    pub version: i64,
}

impl StateRow {
    /// The value as JSON (state values are JSON bytes).
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.value).with_context(|| {
            format!(
                "state value is not JSON: {:?}",
                String::from_utf8_lossy(&self.value)
            )
        })
    }
    /// The value as a JSON integer.
    pub fn as_i64(&self) -> anyhow::Result<i64> {
        match self.json()? {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .with_context(|| format!("state value {n} is not an integer")),
            other => bail!("state value {other} is not a number"),
        }
    }
}

/// One dead-letters row (without the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub id: String,
    pub message_type: String,
    pub error_kind: String,
    pub error_message: Option<String>,
    pub attempts: i64,
}

/// One incoming row (without the body).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IncomingRow {
    pub id: String,
    pub status: String,
    pub owner_id: i64,
    pub execute_at: Option<i64>,
    pub attempts: i64,
    pub message_type: String,
}

/// One outgoing row (without the body).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutgoingRow {
    pub id: String,
    pub owner_id: i64,
    pub destination: String,
    pub attempts: i64,
    pub message_type: String,
}

/// Row counts of the incoming table by (message_type, status), plus the other tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub incoming: BTreeMap<(String, String), i64>,
    pub outgoing: i64,
    pub dead_letters: i64,
}

impl Progress {
    /// Rows of `message_type` with `status`.
    pub fn get(&self, message_type: &str, status: &str) -> i64 {
        self.incoming
            .get(&(message_type.to_owned(), status.to_owned()))
            .copied()
            .unwrap_or(0)
    }
    /// Rows of `message_type` in any status.
    pub fn of_type(&self, message_type: &str) -> i64 {
        self.incoming
            .iter()
            .filter(|((t, _), _)| t == message_type)
            .map(|(_, n)| n)
            .sum()
    }
    /// Rows with `status`, any type.
    pub fn with_status(&self, status: &str) -> i64 {
        self.incoming
            .iter()
            .filter(|((_, s), _)| s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Db {
    pub fn new(store: Store) -> Db {
        Db { store }
    }

    /// A SQLite file with tables `{schema}_...`.
    pub fn sqlite(path: impl Into<PathBuf>, schema: &str) -> Db {
        Db::new(Store::Sqlite {
            path: path.into(),
            schema: schema.to_owned(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// The SQLite file (panics for the server backends).
    pub fn path(&self) -> &Path {
        match &self.store {
            Store::Sqlite { path, .. } => path,
            other => panic!("Db::path(): the store is not a SQLite file but {other}"),
        }
    }

    /// The table of `suffix` (`incoming`, `outgoing`, `dead_letters`, `nodes`,
    /// `state`), quoted for SQL.
    pub fn table(&self, suffix: &str) -> String {
        self.store.table(suffix)
    }

    /// `col` as text (ids are `uuid` on PostgreSQL, `CHAR` on MySQL).
    pub fn as_text(&self, col: &str) -> String {
        match self.backend() {
            Backend::Sqlite => col.to_owned(),
            Backend::Postgres => format!("CAST({col} AS TEXT)"),
            Backend::Mysql => format!("CAST({col} AS CHAR)"),
        }
    }

    /// The state table's `key` column (a reserved word in MySQL).
    pub fn key_col(&self) -> &'static str {
        match self.backend() {
            Backend::Mysql => "`key`",
            _ => "\"key\"",
        }
    }

    /// `?` placeholders as the backend wants them.
    fn placeholders(&self, sql: &str) -> String {
        if self.backend() != Backend::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    }

    async fn connect(&self, write: bool) -> anyhow::Result<Conn> {
        let conn = match &self.store {
            Store::Sqlite { path, .. } => {
                if !path.exists() {
                    bail!("no database file at {} (yet)", path.display());
                }
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(!write)
                    .create_if_missing(false)
                    .busy_timeout(Duration::from_secs(10));
                Conn::Sqlite(
                    SqliteConnection::connect_with(&opts)
                        .await
                        .with_context(|| format!("open {}", path.display()))?,
                )
            }
            Store::Postgres { url, .. } => Conn::Postgres(
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
                    .await
                    .with_context(|| format!("connect to {url}: timed out"))?
                    .with_context(|| format!("connect to {url}"))?,
            ),
            Store::Mysql { url, .. } => Conn::Mysql(
                tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect(url))
                    .await
                    .with_context(|| format!("connect to {url}: timed out"))?
                    .with_context(|| format!("connect to {url}"))?,
            ),
        };
        Ok(conn)
    }

    /// Runs a query and reads its columns as `cols` say.
    pub async fn query(
        &self,
        sql: &str,
        binds: &[Bind],
        cols: &[Col],
    ) -> anyhow::Result<Vec<Vec<Cell>>> {
        let sql = self.placeholders(sql);
        let fut = async {
            let mut conn = self.connect(false).await?;
            let rows: Vec<Vec<Cell>> = with_conn!(&mut conn, c => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.clone())), binds);
                let rows = q.fetch_all(&mut *c).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let mut cells = Vec::with_capacity(cols.len());
                    for (i, col) in cols.iter().enumerate() {
                        cells.push(read_cell!(r, i, col));
                    }
                    out.push(cells);
                }
                out
            });
            with_conn!(conn, c => { c.close().await.ok(); });
            anyhow::Ok(rows)
        };
        tokio::time::timeout(QUERY_TIMEOUT, fut)
            .await
            .with_context(|| format!("query timed out after {QUERY_TIMEOUT:?}: {sql}"))?
            .with_context(|| format!("query on {}: {sql}", self.store))
    }

    /// Runs a statement that writes; returns the rows affected.
    pub async fn execute(&self, sql: &str, binds: &[Bind]) -> anyhow::Result<u64> {
        let sql = self.placeholders(sql);
        let fut = async {
            let mut conn = self.connect(true).await?;
            let n = with_conn!(&mut conn, c => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.clone())), binds);
                q.execute(&mut *c).await?.rows_affected()
            });
            with_conn!(conn, c => { c.close().await.ok(); });
            anyhow::Ok(n)
        };
        tokio::time::timeout(QUERY_TIMEOUT, fut)
            .await
            .with_context(|| format!("statement timed out after {QUERY_TIMEOUT:?}: {sql}"))?
            .with_context(|| format!("statement on {}: {sql}", self.store))
    }

    /// Runs a query returning one integer (e.g. `SELECT count(*) ...`), with
    /// text binds.
    pub async fn scalar(&self, sql: &str, binds: &[&str]) -> anyhow::Result<i64> {
        let binds: Vec<Bind> = binds.iter().map(|b| Bind::from(*b)).collect();
        let rows = self.query(sql, &binds, &[Col::Int]).await?;
        match rows.first().map(|r| &r[0]) {
            Some(c) => c.int(),
            None => bail!("no row from {sql}"),
        }
    }

    /// `count(*)` of one table (by suffix).
    pub async fn row_count(&self, suffix: &str) -> anyhow::Result<i64> {
        self.scalar(&format!("SELECT count(*) FROM {}", self.table(suffix)), &[])
            .await
    }

    /// `count(*)` of each of the five tables, by suffix.
    pub async fn row_counts(&self) -> anyhow::Result<BTreeMap<&'static str, i64>> {
        let mut out = BTreeMap::new();
        for t in TABLES {
            out.insert(t, self.row_count(t).await?);
        }
        Ok(out)
    }

    /// `count(*)` of the incoming table with the given status and/or type.
    pub async fn incoming_count(
        &self,
        status: Option<&str>,
        message_type: Option<&str>,
    ) -> anyhow::Result<i64> {
        let mut sql = format!("SELECT count(*) FROM {} WHERE 1=1", self.table("incoming"));
        let mut binds = Vec::new();
        if let Some(s) = status {
            sql.push_str(" AND status = ?");
            binds.push(s);
        }
        if let Some(t) = message_type {
            sql.push_str(" AND message_type = ?");
            binds.push(t);
        }
        self.scalar(&sql, &binds).await
    }

    /// Counts of all message tables.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        let sql = format!(
            "SELECT message_type, status, count(*) AS n FROM {} GROUP BY message_type, status",
            self.table("incoming")
        );
        let rows = self
            .query(&sql, &[], &[Col::Text, Col::Text, Col::Int])
            .await?;
        let mut p = Progress::default();
        for r in rows {
            p.incoming.insert((r[0].text()?, r[1].text()?), r[2].int()?);
        }
        p.outgoing = self.row_count("outgoing").await?;
        p.dead_letters = self.row_count("dead_letters").await?;
        Ok(p)
    }

    /// All state rows of `plugin`: key -> (value, version).
    pub async fn state(&self, plugin: &str) -> anyhow::Result<BTreeMap<String, StateRow>> {
        let sql = format!(
            "SELECT {}, value, version FROM {} WHERE plugin = ?",
            self.as_text(self.key_col()),
            self.table("state")
        );
        let rows = self
            .query(&sql, &[plugin.into()], &[Col::Text, Col::Bytes, Col::Int])
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(
                r[0].text()?,
                StateRow {
                    value: r[1].bytes()?,
                    version: r[2].int()?,
                },
            );
        }
        Ok(out)
    }

    /// One state row.
    pub async fn state_get(&self, plugin: &str, key: &str) -> anyhow::Result<Option<StateRow>> {
        let sql = format!(
            "SELECT value, version FROM {} WHERE plugin = ? AND {} = ?",
            self.table("state"),
            self.key_col()
        );
        let rows = self
            .query(&sql, &[plugin.into(), key.into()], &[Col::Bytes, Col::Int])
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => Ok(Some(StateRow {
                value: r[0].bytes()?,
                version: r[1].int()?,
            })),
        }
    }

    /// All dead letters (without bodies), oldest first.
    pub async fn dead_letter_rows(&self) -> anyhow::Result<Vec<DeadLetterRow>> {
        let sql = format!(
            "SELECT {}, message_type, error_kind, error_message, attempts FROM {} ORDER BY failed_at, id",
            self.as_text("id"),
            self.table("dead_letters")
        );
        let rows = self
            .query(
                &sql,
                &[],
                &[Col::Text, Col::Text, Col::Text, Col::Text, Col::Int],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeadLetterRow {
                    id: r[0].text()?,
                    message_type: r[1].text()?,
                    error_kind: r[2].text()?,
                    error_message: r[3].opt_text()?,
                    attempts: r[4].int()?,
                })
            })
            .collect()
    }

    /// (id, status, attempts) of the incoming rows of `message_type`, by id.
    pub async fn incoming_rows(
        &self,
        message_type: &str,
    ) -> anyhow::Result<Vec<(String, String, i64)>> {
        Ok(self
            .incoming_snapshot()
            .await?
            .into_iter()
            .filter(|r| r.message_type == message_type)
            .map(|r| (r.id, r.status, r.attempts))
            .collect())
    }

    /// Every incoming row (without bodies), by id.
    pub async fn incoming_snapshot(&self) -> anyhow::Result<Vec<IncomingRow>> {
        let sql = format!(
            "SELECT {}, status, owner_id, execute_at, attempts, message_type FROM {}",
            self.as_text("id"),
            self.table("incoming")
        );
        let rows = self
            .query(
                &sql,
                &[],
                &[
                    Col::Text,
                    Col::Text,
                    Col::Int,
                    Col::Int,
                    Col::Int,
                    Col::Text,
                ],
            )
            .await?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(IncomingRow {
                    id: r[0].text()?.to_lowercase(),
                    status: r[1].text()?,
                    owner_id: r[2].int()?,
                    execute_at: match &r[3] {
                        Cell::Null => None,
                        c => Some(c.int()?),
                    },
                    attempts: r[4].int()?,
                    message_type: r[5].text()?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }

    /// Every outgoing row (without bodies), by id.
    pub async fn outgoing_snapshot(&self) -> anyhow::Result<Vec<OutgoingRow>> {
        let sql = format!(
            "SELECT {}, owner_id, destination, attempts, message_type FROM {}",
            self.as_text("id"),
            self.table("outgoing")
        );
        let rows = self
            .query(
                &sql,
                &[],
                &[Col::Text, Col::Int, Col::Text, Col::Int, Col::Text],
            )
            .await?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(OutgoingRow {
                    id: r[0].text()?.to_lowercase(),
                    owner_id: r[1].int()?,
                    destination: r[2].text()?,
                    attempts: r[3].int()?,
                    message_type: r[4].text()?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }

    /// Rows with an owner (owner_id <> 0): (incoming, outgoing).
    pub async fn owned_rows(&self) -> anyhow::Result<(i64, i64)> {
        let n = |t: &str| format!("SELECT count(*) FROM {} WHERE owner_id <> 0", self.table(t));
        Ok((
            self.scalar(&n("incoming"), &[]).await?,
            self.scalar(&n("outgoing"), &[]).await?,
        ))
    }

    /// Inserts an outgoing row (there is no remote transport yet to write one).
    /// The id is a UUID (inlined: ids are `uuid` on PostgreSQL, text elsewhere).
    pub async fn insert_outgoing(
        &self,
        id: uuid::Uuid,
        owner_id: i64,
        destination: &str,
        message_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let sql = format!(
            "INSERT INTO {} (id, owner_id, destination, deliver_by, attempts, message_type, body) \
             VALUES ('{}', ?, ?, NULL, 0, ?, ?)",
            self.table("outgoing"),
            id.hyphenated()
        );
        let n = self
            .execute(
                &sql,
                &[
                    owner_id.into(),
                    destination.into(),
                    message_type.into(),
                    body.to_vec().into(),
                ],
            )
            .await?;
        anyhow::ensure!(n == 1, "inserted {n} outgoing rows, want 1");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Dropping a store
// ---------------------------------------------------------------------------

/// Drops every object of the store: the PostgreSQL schema (CASCADE), every
/// MySQL table of the prefix. SQLite: nothing (the file goes with the temp dir).
pub async fn drop_store(store: &Store) -> anyhow::Result<()> {
    let db = Db::new(store.clone());
    match store {
        Store::Sqlite { .. } => Ok(()),
        Store::Postgres { schema, .. } => {
            db.execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"), &[])
                .await?;
            Ok(())
        }
        Store::Mysql { .. } => {
            let tables = mysql_tables(&db).await?;
            if !tables.is_empty() {
                let list: Vec<String> = tables.iter().map(|t| format!("`{t}`")).collect();
                db.execute(&format!("DROP TABLE IF EXISTS {}", list.join(", ")), &[])
                    .await?;
            }
            Ok(())
        }
    }
}

/// Tables of the MySQL prefix in the URL's database.
async fn mysql_tables(db: &Db) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{}_", db.store().schema());
    let rows = db
        .query(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE()",
            &[],
            &[Col::Text],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let t = r[0].text()?;
        if t.starts_with(&prefix) {
            out.push(t);
        }
    }
    out.sort();
    Ok(out)
}

/// What is left of the store: the PostgreSQL schema and its relations, the
/// MySQL tables of the prefix, the SQLite tables of the prefix. Empty = nothing.
pub async fn leftovers(store: &Store) -> anyhow::Result<Vec<String>> {
    let db = Db::new(store.clone());
    match store {
        Store::Sqlite { path, schema } => {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let rows = db
                .query(
                    "SELECT name FROM sqlite_master WHERE name LIKE ? ESCAPE '\\'",
                    &[format!("{schema}\\_%").into()],
                    &[Col::Text],
                )
                .await?;
            rows.iter().map(|r| r[0].text()).collect()
        }
        Store::Postgres { schema, .. } => {
            let mut out = Vec::new();
            let n = db
                .scalar(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = ?",
                    &[schema],
                )
                .await?;
            if n > 0 {
                out.push(format!("schema {schema}"));
            }
            let rows = db
                .query(
                    "SELECT CAST(c.relname AS TEXT) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ?",
                    &[schema.as_str().into()],
                    &[Col::Text],
                )
                .await?;
            for r in rows {
                out.push(format!("{schema}.{}", r[0].text()?));
            }
            Ok(out)
        }
        Store::Mysql { .. } => mysql_tables(&db).await,
    }
}

/// Connects once to the store's server (not for SQLite) and panics with what
/// to do if it cannot.
pub fn check_server(store: &Store) {
    let Some(url) = store.url().map(str::to_owned) else {
        return;
    };
    let db = Db::new(store.clone());
    let r = block_on_own_runtime(async move { db.scalar("SELECT 1", &[]).await });
    if let Err(e) = r {
        panic!(
            "the {} test server at {url} is not reachable: {e:#}\n\
             Start it (`.ci/run` starts PostgreSQL and MariaDB), or point \
             JASPER_TEST_POSTGRES_URL / JASPER_TEST_MYSQL_URL at one.",
            store.backend()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_and_swap_the_database() {
        let u = ServerUrl::parse("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port
            ),
            ("postgres", None, "127.0.0.1", 5432)
        );
        assert_eq!(u.database, "test");
        assert_eq!(
            u.with_database("x1"),
            "postgres://postgres@127.0.0.1:5432/x1"
        );
        let m = ServerUrl::parse("mysql://nobody:wrong@db.local/test?ssl-mode=disabled").unwrap();
        assert_eq!(m.password.as_deref(), Some("wrong"));
        assert_eq!((m.host.as_str(), m.port), ("db.local", 3306));
        assert_eq!(
            m.with_database("y"),
            "mysql://nobody:wrong@db.local:3306/y?ssl-mode=disabled"
        );
    }

    #[test]
    fn tables_and_placeholders_per_backend() {
        let pg = Db::new(Store::Postgres {
            url: "postgres://x@h/d".into(),
            schema: "tabc".into(),
        });
        assert_eq!(pg.table("incoming"), "\"tabc\".\"jasper_incoming\"");
        assert_eq!(pg.placeholders("a = ? AND b = ?"), "a = $1 AND b = $2");
        let my = Db::new(Store::Mysql {
            url: "mysql://x@h/d".into(),
            schema: "tabc".into(),
        });
        assert_eq!(my.table("state"), "`tabc_state`");
        assert_eq!(my.placeholders("a = ?"), "a = ?");
        assert_eq!(my.key_col(), "`key`");
        let lite = Db::sqlite("/x/j.db", "jasper");
        assert_eq!(lite.table("dead_letters"), "\"jasper_dead_letters\"");
        assert_eq!(Backend::of_url("mariadb://r@h/d"), Some(Backend::Mysql));
        assert_eq!(
            Backend::of_url("postgresql://r@h/d"),
            Some(Backend::Postgres)
        );
        let s = unique_schema();
        assert!(s.len() == 13 && s.starts_with('t'), "{s}");
    }

    /// The read-only helpers work on a WAL-mode file another connection writes,
    /// and report a missing file as an error (not as zero rows).
    #[tokio::test]
    async fn db_reads_a_wal_database_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jasper.db");
        let db = Db::sqlite(path.clone(), "jasper");
        let err = db.progress().await.unwrap_err();
        assert!(format!("{err:#}").contains("no database file"), "{err:#}");

        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut w = SqliteConnection::connect_with(&opts).await.unwrap();
        for sql in [
            "CREATE TABLE jasper_incoming (id TEXT PRIMARY KEY, status TEXT, owner_id INTEGER, execute_at INTEGER, attempts INTEGER, message_type TEXT, destination TEXT, received_at TEXT, keep_until INTEGER, body BLOB)",
            "CREATE TABLE jasper_outgoing (id TEXT PRIMARY KEY, owner_id INTEGER, destination TEXT, deliver_by INTEGER, attempts INTEGER, message_type TEXT, body BLOB)",
            "CREATE TABLE jasper_dead_letters (id TEXT PRIMARY KEY, message_type TEXT, received_at TEXT, source TEXT, error_kind TEXT, error_message TEXT, failed_at INTEGER, attempts INTEGER, replayable INTEGER, body BLOB)",
            "CREATE TABLE jasper_state (plugin TEXT, key TEXT, value BLOB, version INTEGER, PRIMARY KEY (plugin, key))",
            "INSERT INTO jasper_incoming (id, status, owner_id, attempts, message_type) VALUES ('1', 'handled', 0, 0, 'A'), ('2', 'incoming', 7, 0, 'A'), ('3', 'scheduled', 0, 0, 'B')",
            "INSERT INTO jasper_dead_letters (id, message_type, error_kind, error_message, failed_at, attempts) VALUES ('9', 'C', 'panic', 'boom', 1, 2)",
            "INSERT INTO jasper_state VALUES ('audit', 'count', CAST('12' AS BLOB), 3), ('audit', 'seen/x', CAST('1' AS BLOB), 1)",
        ] {
            sqlx::query(sql).execute(&mut w).await.unwrap();
        }
        // Read while the writer's connection is open (WAL + shm exist) ...
        let p = db.progress().await.unwrap();
        assert_eq!(p.get("A", "handled"), 1);
        assert_eq!(p.of_type("A"), 2);
        assert_eq!(p.with_status("scheduled"), 1);
        assert_eq!((p.outgoing, p.dead_letters), (0, 1));
        assert_eq!(
            db.incoming_count(Some("incoming"), Some("A"))
                .await
                .unwrap(),
            1
        );
        let st = db.state("audit").await.unwrap();
        assert_eq!(st["count"].as_i64().unwrap(), 12);
        assert_eq!(st["count"].version, 3);
        assert_eq!(
            db.state_get("audit", "seen/x")
                .await
                .unwrap()
                .unwrap()
                .as_i64()
                .unwrap(),
            1
        );
        assert_eq!(db.state_get("audit", "nope").await.unwrap(), None);
        let dl = db.dead_letter_rows().await.unwrap();
        assert_eq!(dl[0].error_kind, "panic");
        assert_eq!(dl[0].attempts, 2);
        // ... and after it closed (the WAL checkpointed and removed).
        w.close().await.unwrap();
        assert_eq!(db.incoming_rows("A").await.unwrap().len(), 2);
        assert_eq!(db.owned_rows().await.unwrap(), (1, 0));
        assert_eq!(db.row_count("state").await.unwrap(), 2);
    }
}
