//! Where finished call records are kept: SQLite by default (one file, created with its
//! directory on first run), or PostgreSQL when `CALLBRIDGE_DATABASE_URL` names one (several
//! bridge instances sharing one store). One crate speaks both (sqlx, runtime queries only:
//! nothing needs a database at build time).
//!
//! * [`open`] connects (SQLite: WAL mode and a busy timeout; PostgreSQL: a small pool with a
//!   connect timeout) and runs the migrations embedded from `migrations/{sqlite,postgres}`.
//! * [`spawn_writer`] starts the task that takes finished records off the journal's channel
//!   ([`channel`]) and upserts them by id, several in one transaction when several are
//!   waiting, retrying transient failures with backoff. It never panics and logs failures
//!   without record content. [`StoreWriter::finish`] drains what is queued at shutdown.
//! * [`Store`] implements [`RecordStore`] (the read side the operator API uses).
//!
//! Schema: one `call_records` row per call. The columns operators filter and sort by (source,
//! CallSid, redacted numbers, times, end reason, counts, tokens, cost, recording path) are plain
//! indexed columns; `record` holds the whole [`CallRecord`] as JSON (TEXT in SQLite, JSONB in
//! PostgreSQL), which is what [`Store::get`] and [`Store::recent`] return.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::Row;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::journal::{unix_ms, CallRecord, SINK_CAPACITY};
use super::{BoxFuture, RecordStore};
use crate::config::RecordsConfig;
use crate::redact::redact_text;

/// Most records [`Store::recent`] returns at once.
pub const MAX_LIMIT: usize = 500;
/// Most records the writer puts in one transaction.
pub const MAX_BATCH: usize = 256;
/// How long an SQLite connection waits for a lock held by another connection.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening the store (or taking a pooled connection) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write attempt may take before it counts as a transient failure.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before retrying a failed write; doubled per attempt up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between write attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Why the store could not be opened, written or read. Messages never carry record content
/// or the database URL's password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `CALLBRIDGE_DATABASE_URL` could not be parsed.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// The database could not be reached or opened.
    #[error("cannot open the call record store ({location}): {reason}")]
    Open {
        /// Where (no password).
        location: String,
        /// Why.
        reason: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the call record store ({location}): {reason}")]
    Migrate {
        /// Where (no password).
        location: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("database error: {message}")]
    Database {
        /// Worth retrying (connection lost, busy, timeout).
        transient: bool,
        /// What the driver said (SQLSTATE or SQLite code and message, numbers redacted).
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("call record {id} cannot be decoded: {reason}")]
    Corrupt {
        /// The record's id.
        id: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database {
                transient: true,
                ..
            }
        )
    }

    fn timeout() -> StoreError {
        StoreError::Database {
            transient: true,
            message: "timed out".into(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Database {
            transient: is_transient(&e),
            message: describe(&e),
        }
    }
}

/// The driver's error as text: for database errors the code and the primary message only
/// (PostgreSQL puts offending values in DETAIL/CONTEXT, which are left out), numbers redacted.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            redact_text(&format!("{code}: {}", db.message()))
        }
        other => redact_text(&other.to_string()),
    }
}

/// Whether a driver error is worth retrying: lost connections, pool exhaustion, lock
/// contention, server restarts, serialization failures.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if let Ok(n) = code.parse::<i32>() {
                // SQLite (extended result code): BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                return matches!(n & 0xff, 5 | 6 | 10 | 13 | 14);
            }
            // PostgreSQL SQLSTATE: connection exception, serialization failure, deadlock,
            // insufficient resources, operator intervention (admin/crash shutdown).
            code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || code.starts_with("57P")
        }
        _ => false,
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The call record store (cheap to clone: the pool is shared).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    location: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

/// Which database the store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// Opens the store `config` names (the database URL if set, else the SQLite file), creating
/// the SQLite file and its directory when missing, and runs the migrations.
pub async fn open(config: &RecordsConfig) -> Result<Store, StoreError> {
    let url = config.database_url.expose().trim();
    let secrets = url_secrets(url);
    let scrub = |s: String| scrub(s, &secrets);
    if url.is_empty() || url.starts_with("sqlite:") {
        let options = if url.is_empty() {
            SqliteConnectOptions::new().filename(config.sqlite_path.trim())
        } else {
            SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(scrub(e.to_string())))?
        };
        open_sqlite(options).await
    } else {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Url(scrub(e.to_string())))?;
        open_postgres(options)
            .await
            .map_err(|e| scrub_error(e, &secrets))
    }
}

async fn open_sqlite(options: SqliteConnectOptions) -> Result<Store, StoreError> {
    let file = options.get_filename().to_path_buf();
    let location: Arc<str> = format!("sqlite file {}", file.display()).into();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !is_memory(&file) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    probe::<sqlx::SqliteConnection>(&options, &location).await?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Open {
            location: location.to_string(),
            reason: describe(&e),
        })?;
    SQLITE_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|e| StoreError::Migrate {
            location: location.to_string(),
            reason: redact_text(&e.to_string()),
        })?;
    Ok(Store {
        backend: Backend::Sqlite(pool),
        location,
    })
}

fn is_memory(file: &Path) -> bool {
    file.as_os_str().to_string_lossy().contains(":memory:")
}

async fn open_postgres(options: PgConnectOptions) -> Result<Store, StoreError> {
    let location: Arc<str> = format!(
        "postgres {}:{}/{}",
        options.get_host(),
        options.get_port(),
        options
            .get_database()
            .unwrap_or_else(|| options.get_username())
    )
    .into();
    let options = options.application_name("callbridge");
    probe::<sqlx::PgConnection>(&options, &location).await?;
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Open {
            location: location.to_string(),
            reason: describe(&e),
        })?;
    POSTGRES_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|e| StoreError::Migrate {
            location: location.to_string(),
            reason: redact_text(&e.to_string()),
        })?;
    Ok(Store {
        backend: Backend::Postgres(pool),
        location,
    })
}

/// One connection, bounded by [`CONNECT_TIMEOUT`], before the pool is built: its error is the
/// real reason (refused, unknown host, bad password), where the pool would only report that it
/// timed out retrying.
async fn probe<C: sqlx::Connection>(
    options: &<C as sqlx::Connection>::Options,
    location: &str,
) -> Result<(), StoreError> {
    let open = |reason: String| StoreError::Open {
        location: location.to_string(),
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, C::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(open(describe(&e))),
        Err(_) => Err(open(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The password in a database URL (as written and percent-decoded), so error texts can be
/// scrubbed of it whatever the driver puts in them.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                out.push(password.to_string());
            }
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some(("password", v)) = pair.split_once('=') {
                out.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = out
        .iter()
        .filter_map(|p| urlencoding::decode(p).ok().map(|d| d.into_owned()))
        .collect();
    out.extend(decoded);
    out.retain(|p| !p.is_empty());
    out
}

fn scrub(mut s: String, secrets: &[String]) -> String {
    for p in secrets {
        s = s.replace(p.as_str(), "***");
    }
    s
}

fn scrub_error(e: StoreError, secrets: &[String]) -> StoreError {
    match e {
        StoreError::Open { location, reason } => StoreError::Open {
            location,
            reason: scrub(reason, secrets),
        },
        StoreError::Migrate { location, reason } => StoreError::Migrate {
            location,
            reason: scrub(reason, secrets),
        },
        StoreError::Database { transient, message } => StoreError::Database {
            transient,
            message: scrub(message, secrets),
        },
        other => other,
    }
}

const COLUMNS: [&str; 19] = [
    "id",
    "source",
    "call_sid",
    "stream_sid",
    "from_number",
    "to_number",
    "started_at_ms",
    "ended_at_ms",
    "end_reason",
    "turns",
    "barge_ins",
    "sessions",
    "tool_calls",
    "handovers",
    "tokens_total",
    "cost_usd",
    "recording",
    "record",
    "written_at_ms",
];

/// `INSERT … ON CONFLICT (id) DO UPDATE` with `$n` (PostgreSQL) or `?n` (SQLite) placeholders:
/// a record written twice (a retry, a continued call) replaces the row.
fn upsert_sql(mark: char) -> String {
    let placeholders: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("{mark}{i}")).collect();
    let updates: Vec<String> = COLUMNS[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO call_records ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        COLUMNS.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    )
}

static SQLITE_UPSERT: LazyLock<String> = LazyLock::new(|| upsert_sql('?'));
static POSTGRES_UPSERT: LazyLock<String> = LazyLock::new(|| upsert_sql('$'));

/// A record made storable: a non-finite cost becomes 0 (JSON has no NaN), and for PostgreSQL
/// NUL characters become U+FFFD (neither TEXT nor JSONB can hold them).
fn storable(r: &CallRecord, postgres: bool) -> Result<Cow<'_, CallRecord>, StoreError> {
    let mut out = Cow::Borrowed(r);
    if !r.cost_usd.is_finite() {
        out.to_mut().cost_usd = 0.0;
    }
    if postgres {
        let mut value = serde_json::to_value(out.as_ref()).map_err(|e| StoreError::Corrupt {
            id: r.id.clone(),
            reason: e.to_string(),
        })?;
        if strip_nul(&mut value) {
            out = Cow::Owned(
                serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
                    id: r.id.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
    }
    Ok(out)
}

/// Replaces NUL characters in every string and key; true when there were any.
fn strip_nul(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => {
            *s = s.replace('\0', "\u{FFFD}");
            true
        }
        Value::Array(a) => a.iter_mut().fold(false, |acc, x| strip_nul(x) | acc),
        Value::Object(m) => {
            let mut changed = false;
            if m.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(m);
                for (k, x) in old {
                    m.insert(k.replace('\0', "\u{FFFD}"), x);
                }
                changed = true;
            }
            m.values_mut().fold(changed, |acc, x| strip_nul(x) | acc)
        }
        _ => false,
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Binds one record's columns, in [`COLUMNS`] order, to a query of either driver.
macro_rules! bind_record {
    ($query:expr, $r:expr, $record:expr, $now:expr) => {{
        let r: &CallRecord = $r;
        $query
            .bind(&r.id)
            .bind(&r.source)
            .bind(&r.call_sid)
            .bind(&r.stream_sid)
            .bind(&r.from)
            .bind(&r.to)
            .bind(r.started_at_ms)
            .bind(r.ended_at_ms)
            .bind(&r.end_reason)
            .bind(i64::from(r.turns))
            .bind(i64::from(r.barge_ins))
            .bind(i64::from(r.sessions))
            .bind(clamp_i64(r.tool_calls.len() as u64))
            .bind(clamp_i64(r.handovers.len() as u64))
            .bind(clamp_i64(r.usage.total))
            .bind(r.cost_usd)
            .bind(&r.recording)
            .bind($record)
            .bind($now)
    }};
}

impl Store {
    /// Which database this is.
    pub fn kind(&self) -> StoreKind {
        match self.backend {
            Backend::Sqlite(_) => StoreKind::Sqlite,
            Backend::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// Where the records go, for logs: `sqlite file PATH` or `postgres HOST:PORT/DB` (never
    /// the password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Upserts records by id, in one transaction when there are several.
    pub async fn write(&self, records: &[CallRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = unix_ms(std::time::SystemTime::now());
        match &self.backend {
            Backend::Sqlite(pool) => {
                let rows = records
                    .iter()
                    .map(|r| {
                        let r = storable(r, false)?;
                        let json =
                            serde_json::to_string(r.as_ref()).map_err(|e| StoreError::Corrupt {
                                id: r.id.clone(),
                                reason: e.to_string(),
                            })?;
                        Ok((r, json))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let mut tx = pool.begin().await?;
                for (r, json) in &rows {
                    bind_record!(sqlx::query(SQLITE_UPSERT.as_str()), r, json, now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Backend::Postgres(pool) => {
                let rows = records
                    .iter()
                    .map(|r| storable(r, true))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let mut tx = pool.begin().await?;
                for r in &rows {
                    bind_record!(
                        sqlx::query(POSTGRES_UPSERT.as_str()),
                        r,
                        Json(r.as_ref()),
                        now
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Stored calls, newest first (by start time, then id): at most `limit` (capped at
    /// [`MAX_LIMIT`]), started strictly before `before_ms` (Unix ms) when given. To page, pass
    /// the last record's `started_at_ms` as the next `before_ms`.
    pub async fn recent(
        &self,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let limit = limit.min(MAX_LIMIT) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = before_ms.unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(pool) => {
                let rows = sqlx::query(
                    "SELECT id, record, cost_usd FROM call_records WHERE started_at_ms < ?1 \
                     ORDER BY started_at_ms DESC, id DESC LIMIT ?2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                Ok(rows.iter().filter_map(|r| keep(sqlite_row(r))).collect())
            }
            Backend::Postgres(pool) => {
                let rows = sqlx::query(
                    "SELECT id, record, cost_usd FROM call_records WHERE started_at_ms < $1 \
                     ORDER BY started_at_ms DESC, id DESC LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                Ok(rows.iter().filter_map(|r| keep(postgres_row(r))).collect())
            }
        }
    }

    /// One stored call's full record.
    pub async fn get(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query("SELECT id, record, cost_usd FROM call_records WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| sqlite_row(&r))
                    .transpose()
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT id, record, cost_usd FROM call_records WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| postgres_row(&r))
                    .transpose()
            }
        }
    }

    /// How many calls are stored.
    pub async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM call_records")
                    .fetch_one(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM call_records")
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(n.max(0) as u64)
    }

    /// Closes the pool (SQLite checkpoints its WAL). Later calls fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// A row that cannot be decoded is logged (by id) and left out of a list.
fn keep(r: Result<CallRecord, StoreError>) -> Option<CallRecord> {
    r.map_err(|e| tracing::warn!(error = %e, "stored call record skipped"))
        .ok()
}

fn corrupt(id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    }
}

/// The cost is taken from its own column: a REAL/DOUBLE PRECISION round-trips an f64 exactly.
fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> Result<CallRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let json: String = row.try_get("record").map_err(|e| corrupt(&id, e))?;
    let mut record: CallRecord = serde_json::from_str(&json).map_err(|e| corrupt(&id, e))?;
    record.cost_usd = row.try_get("cost_usd").map_err(|e| corrupt(&id, e))?;
    Ok(record)
}

fn postgres_row(row: &sqlx::postgres::PgRow) -> Result<CallRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let Json(mut record): Json<CallRecord> = row.try_get("record").map_err(|e| corrupt(&id, e))?;
    record.cost_usd = row.try_get("cost_usd").map_err(|e| corrupt(&id, e))?;
    Ok(record)
}

impl RecordStore for Store {
    fn recent(
        &self,
        limit: usize,
        before_ms: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<CallRecord>, String>> {
        Box::pin(async move {
            Store::recent(self, limit, before_ms)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<CallRecord>, String>> {
        Box::pin(async move { Store::get(self, id).await.map_err(|e| e.to_string()) })
    }
}

/// The channel the journal hands finished records to ([`SINK_CAPACITY`] records).
pub fn channel() -> (mpsc::Sender<CallRecord>, mpsc::Receiver<CallRecord>) {
    mpsc::channel(SINK_CAPACITY)
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
    unwritten: AtomicU64,
}

/// What a writer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterReport {
    /// Records stored.
    pub written: u64,
    /// Records the database refused for good (logged by id, dropped).
    pub failed: u64,
    /// Records still queued or being retried when the drain deadline passed (not stored).
    pub unwritten: u64,
}

/// The running writer task.
pub struct StoreWriter {
    stop: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
}

impl StoreWriter {
    /// What the writer has done so far.
    pub fn report(&self) -> WriterReport {
        report(&self.counters)
    }

    /// Stops taking new records, writes those already queued (retrying transient failures
    /// until `grace` has passed), and waits for the task to end.
    pub async fn finish(mut self, grace: Duration) -> WriterReport {
        let _ = self.stop.send(Some(Instant::now() + grace));
        // The writer keeps to the deadline itself; this bound only guards a hung driver call.
        let bound = grace + Duration::from_secs(2);
        match tokio::time::timeout(bound, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "call record writer failed"),
            Err(_) => {
                self.task.abort();
                tracing::error!("call record writer did not stop in time");
            }
        }
        report(&self.counters)
    }
}

fn report(c: &Counters) -> WriterReport {
    WriterReport {
        written: c.written.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        unwritten: c.unwritten.load(Ordering::Relaxed),
    }
}

/// Starts the writer: it takes records off `rx` and stores them until every sender is gone
/// or [`StoreWriter::finish`] is called.
pub fn spawn_writer(store: Store, rx: mpsc::Receiver<CallRecord>) -> StoreWriter {
    let (stop, stop_rx) = watch::channel(None);
    let counters = Arc::new(Counters::default());
    let writer = Writer {
        store,
        rx,
        stop: stop_rx,
        stop_gone: false,
        deadline: None,
        counters: counters.clone(),
    };
    let task = tokio::spawn(writer.run());
    StoreWriter {
        stop,
        task,
        counters,
    }
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<CallRecord>,
    stop: watch::Receiver<Option<Instant>>,
    /// The handle was dropped without `finish`: run until the channel closes.
    stop_gone: bool,
    /// Set by `finish`: the channel is closed, and writes give up at this time.
    deadline: Option<Instant>,
    counters: Arc<Counters>,
}

enum Attempt {
    Stored,
    Refused(StoreError),
    /// The drain deadline passed.
    GaveUp,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let next = if self.deadline.is_some() || self.stop_gone {
                self.rx.recv().await
            } else {
                tokio::select! {
                    r = self.rx.recv() => r,
                    c = self.stop.changed() => {
                        self.on_stop_signal(c.is_ok());
                        continue;
                    }
                }
            };
            let Some(first) = next else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if !self.write_batch(batch).await {
                self.rx.close();
                let mut left = 0u64;
                while self.rx.try_recv().is_ok() {
                    left += 1;
                }
                self.counters.unwritten.fetch_add(left, Ordering::Relaxed);
                break;
            }
        }
        let r = report(&self.counters);
        if r.unwritten > 0 {
            tracing::error!(
                store = %self.store.location(),
                unwritten = r.unwritten,
                "call record store unavailable at shutdown: records not stored"
            );
        }
    }

    /// `sent`: `finish` sent a deadline (else the handle was dropped without it).
    fn on_stop_signal(&mut self, sent: bool) {
        if !sent {
            self.stop_gone = true;
            return;
        }
        if let Some(deadline) = *self.stop.borrow_and_update() {
            self.deadline = Some(deadline);
            // New records are refused from now on; those queued are still received.
            self.rx.close();
        }
    }

    /// Stores a batch; false when the drain deadline passed first.
    async fn write_batch(&mut self, batch: Vec<CallRecord>) -> bool {
        let n = batch.len() as u64;
        match self.write_retrying(&batch).await {
            Attempt::Stored => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                true
            }
            Attempt::GaveUp => {
                self.counters.unwritten.fetch_add(n, Ordering::Relaxed);
                false
            }
            Attempt::Refused(e) if batch.len() == 1 => {
                self.refused(&batch[0], &e);
                true
            }
            Attempt::Refused(_) => {
                // One bad record must not take the others with it: store them one by one.
                for (i, r) in batch.iter().enumerate() {
                    match self.write_retrying(std::slice::from_ref(r)).await {
                        Attempt::Stored => {
                            self.counters.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Attempt::Refused(e) => self.refused(r, &e),
                        Attempt::GaveUp => {
                            self.counters
                                .unwritten
                                .fetch_add((batch.len() - i) as u64, Ordering::Relaxed);
                            return false;
                        }
                    }
                }
                true
            }
        }
    }

    fn refused(&self, r: &CallRecord, e: &StoreError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(id = %r.id, error = %e, "call record refused by the store; dropped");
    }

    async fn write_retrying(&mut self, records: &[CallRecord]) -> Attempt {
        let mut delay = RETRY_FIRST;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let budget = match self.deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(WRITE_TIMEOUT),
                None => WRITE_TIMEOUT,
            };
            if budget.is_zero() {
                return Attempt::GaveUp;
            }
            let result = match tokio::time::timeout(budget, self.store.write(records)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::timeout()),
            };
            let e = match result {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(attempts = attempt, "call record store writable again");
                    }
                    return Attempt::Stored;
                }
                Err(e) if !e.is_transient() => return Attempt::Refused(e),
                Err(e) => e,
            };
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(
                    store = %self.store.location(),
                    error = %e,
                    records = records.len(),
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "call record store write failed; retrying"
                );
            }
            if let Some(d) = self.deadline {
                if Instant::now() + delay >= d {
                    return Attempt::GaveUp;
                }
                tokio::time::sleep(delay).await;
            } else if self.stop_gone {
                tokio::time::sleep(delay).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    c = self.stop.changed() => self.on_stop_signal(c.is_ok()),
                }
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_raw_and_decoded() {
        let s = url_secrets("postgres://app:p%40ss@db.example:5432/calls?sslmode=require");
        assert!(s.contains(&"p%40ss".to_string()));
        assert!(s.contains(&"p@ss".to_string()));
        let s = url_secrets("postgres://db/calls?user=app&password=hunter2");
        assert_eq!(s, vec!["hunter2".to_string(), "hunter2".to_string()]);
        assert!(url_secrets("postgres://db/calls").is_empty());
        assert_eq!(
            scrub(
                "failed for p@ss at p%40ss".into(),
                &url_secrets("postgres://a:p%40ss@h/d")
            ),
            "failed for *** at ***"
        );
    }

    #[test]
    fn upsert_lists_every_column_once() {
        let sql = upsert_sql('$');
        assert!(sql.contains("$19)"));
        assert!(!sql.contains("$20"));
        assert!(sql.contains("ON CONFLICT (id) DO UPDATE SET source = excluded.source"));
        assert!(!sql.contains("id = excluded.id"));
    }

    #[test]
    fn nul_characters_are_replaced_for_postgres_only() {
        let mut r = CallRecord::new(
            "00000000000000aa",
            super::super::CallSource::Phone,
            std::time::SystemTime::now(),
        );
        r.end_detail = Some("a\0b".into());
        r.cost_usd = f64::NAN;
        let pg = storable(&r, true).unwrap();
        assert_eq!(pg.end_detail.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(pg.cost_usd, 0.0);
        let lite = storable(&r, false).unwrap();
        assert_eq!(lite.end_detail.as_deref(), Some("a\0b"));
        r.cost_usd = 0.5;
        r.end_detail = None;
        assert!(matches!(storable(&r, true).unwrap(), Cow::Borrowed(_)));
    }
}
