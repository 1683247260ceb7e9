//! What the daemon counts (Prometheus metrics through the `metrics` facade) and the HTTP
//! listener that serves them with health, readiness and per-user figures (`--metrics-listen`).
//!
//! The figures are recorded where each thing happens (the dispatcher for commands and
//! transfers, the accept loop for connections, the login for logins) through the small
//! functions here, so every name and label set is spelled once. Without `--metrics-listen` no
//! recorder is installed and every call is a no-op.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use storage::Root;

use crate::store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Most metrics connections served at once; more are closed unanswered. A scraper or two and
/// a health checker need a handful.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a request's headers (hyper's smallest buffer; a scrape sends a few hundred).
const MAX_HEADER: usize = 8 * 1024;
/// Longest a metrics connection stays open, keep-alive included: then it is closed between
/// requests, and the scraper connects again.
const MAX_LIFETIME: Duration = Duration::from_secs(60);
/// Longest the readiness probe of the storage root may take before readiness says no.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the exporter's histograms are folded in between scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Buckets of the `_seconds` histograms: a small file's transfer to a long one's.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Buckets of the `_bytes` histograms: 1 KiB to 16 GiB, by factors of 4 to 16.
const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
    17_179_869_184.0,
];

/// Installs the process's Prometheus recorder (once; later calls return the same handle) and
/// describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Another recorder already in place (an embedding program's) keeps its own.
            if metrics::set_global_recorder(recorder).is_err() {
                warn!("a metrics recorder was already installed; ftpd's figures go to it");
            }
            describe();
            // Series without labels exist from the start, at 0: a rate over them works from
            // the first scrape, before the first connection.
            for name in [
                "ftpd_connections_accepted_total",
                "ftpd_bytes_received_total",
                "ftpd_bytes_sent_total",
            ] {
                counter!(name).increment(0);
            }
            for name in ["ftpd_connections_active", "ftpd_sessions_active"] {
                gauge!(name).increment(0.0);
            }
            handle
        })
        .clone()
}

/// The exporter's settings: every `_seconds` and `_bytes` metric a histogram.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
        .expect("the bucket lists are not empty")
}

/// Help text and units, rendered as `# HELP` and `# TYPE` lines.
fn describe() {
    describe_counter!(
        "ftpd_connections_accepted_total",
        Unit::Count,
        "Connections admitted by the accept loop."
    );
    describe_counter!(
        "ftpd_connections_refused_total",
        Unit::Count,
        "Connections refused or dropped before a session began, by reason."
    );
    describe_gauge!(
        "ftpd_connections_active",
        Unit::Count,
        "Connections open now, logged in or not."
    );
    describe_gauge!(
        "ftpd_sessions_active",
        Unit::Count,
        "Logged-in sessions open now (serving anonymously: sessions past hello)."
    );
    describe_counter!(
        "ftpd_logins_total",
        Unit::Count,
        "Login attempts by result (ok, failed, throttled) and method (password, key, anonymous)."
    );
    describe_counter!(
        "ftpd_commands_total",
        Unit::Count,
        "Commands answered, by command and outcome (ok or the wire error code)."
    );
    describe_counter!(
        "ftpd_bytes_received_total",
        Unit::Bytes,
        "File content bytes received by uploads (bytes a resume skipped not counted)."
    );
    describe_counter!(
        "ftpd_bytes_sent_total",
        Unit::Bytes,
        "File content bytes sent by downloads (bytes a resume skipped not counted)."
    );
    describe_counter!(
        "ftpd_transfers_total",
        Unit::Count,
        "Transfers answered, by direction and outcome (ok or the wire error code)."
    );
    describe_histogram!(
        "ftpd_transfer_duration_seconds",
        Unit::Seconds,
        "Time from a transfer's request to its answer, by direction."
    );
    describe_histogram!(
        "ftpd_transfer_size_bytes",
        Unit::Bytes,
        "Content bytes a transfer moved, by direction."
    );
    describe_counter!(
        "ftpd_chunk_digest_failures_total",
        Unit::Count,
        "Transfers the daemon refused because a digest it checked did not match, by direction."
    );
    describe_counter!(
        "ftpd_resumes_total",
        Unit::Count,
        "Transfers that started at an offset past 0 (put -c, get -c), by direction."
    );
    describe_gauge!(
        "ftpd_staged_bytes",
        Unit::Bytes,
        "Bytes held by interrupted uploads kept for a resume."
    );
    describe_gauge!(
        "ftpd_quota_used_bytes",
        Unit::Bytes,
        "Bytes the files in the root take, when --quota is set."
    );
    describe_gauge!(
        "ftpd_quota_limit_bytes",
        Unit::Bytes,
        "The root's --quota, when set."
    );
    describe_counter!(
        "ftpd_throttled_seconds_total",
        Unit::Seconds,
        "Time transfers spent waiting for a rate limit."
    );
    describe_counter!(
        "ftpd_quota_warnings_total",
        Unit::Count,
        "Times a user passed 90 % of a quota."
    );
    describe_counter!(
        "ftpd_rate_leases_total",
        Unit::Count,
        "Leases of users' service-wide rate caps taken from the database (--database)."
    );
    describe_counter!(
        "ftpd_rate_leased_bytes_total",
        Unit::Bytes,
        "Bytes of users' service-wide rate caps leased from the database (--database)."
    );
    describe_counter!(
        "ftpd_rate_lease_failures_total",
        Unit::Count,
        "Times leasing a user's rate from the database failed and the local cap took over."
    );
}

// ---------------------------------------------------------------------------------------------
// What the daemon records

/// Which way bytes go, seen from the daemon: uploads (and commands) come in, downloads (and
/// replies) go out. One type for the metrics' `direction` label and the rate caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    /// The `direction` label.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// How a login attempt ended, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    Ok,
    /// Wrong credentials or an unknown user.
    Failed,
    /// Refused unchecked: the user name or the address range serves a penalty.
    Throttled,
}

/// A connection the accept loop admitted.
pub fn connection_accepted() {
    counter!("ftpd_connections_accepted_total").increment(1);
}

/// A connection refused before a session began; `reason` is one of a fixed few.
pub fn connection_refused(reason: &'static str) {
    counter!("ftpd_connections_refused_total", "reason" => reason).increment(1);
}

/// A login attempt; `method` is `password`, `key` or `anonymous`.
pub fn login(result: LoginResult, method: &'static str) {
    let result = match result {
        LoginResult::Ok => "ok",
        LoginResult::Failed => "failed",
        LoginResult::Throttled => "throttled",
    };
    counter!("ftpd_logins_total", "result" => result, "method" => method).increment(1);
}

/// A command answered: `command` is the dispatcher's op name, `outcome` `ok` or a wire code.
pub fn command(command: &'static str, outcome: &'static str) {
    counter!("ftpd_commands_total", "command" => command, "outcome" => outcome).increment(1);
}

/// A transfer answered, with what it moved and how long it took.
pub fn transfer(direction: Direction, outcome: &'static str, bytes: u64, elapsed: Duration) {
    let d = direction.label();
    counter!("ftpd_transfers_total", "direction" => d, "outcome" => outcome).increment(1);
    let moved = match direction {
        Direction::Upload => counter!("ftpd_bytes_received_total"),
        Direction::Download => counter!("ftpd_bytes_sent_total"),
    };
    moved.increment(bytes);
    histogram!("ftpd_transfer_duration_seconds", "direction" => d).record(elapsed.as_secs_f64());
    // Exact to 2^53, which is as far as sizes go on the wire.
    histogram!("ftpd_transfer_size_bytes", "direction" => d).record(bytes as f64);
    if outcome == protocol::ErrorCode::ChecksumMismatch.as_str() {
        counter!("ftpd_chunk_digest_failures_total", "direction" => d).increment(1);
    }
}

/// A transfer that starts past offset 0.
pub fn resumed(direction: Direction) {
    counter!("ftpd_resumes_total", "direction" => direction.label()).increment(1);
}

/// Counts itself in a gauge while it lives: a connection, or a logged-in session.
#[derive(Debug)]
pub struct Active(&'static str);

impl Active {
    /// One more open connection, until dropped.
    pub fn connection() -> Active {
        Active::of("ftpd_connections_active")
    }

    /// One more logged-in session, until dropped.
    pub fn session() -> Active {
        Active::of("ftpd_sessions_active")
    }

    fn of(name: &'static str) -> Active {
        gauge!(name).increment(1.0);
        Active(name)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

/// The root's usage gauges, read from storage's counts (at each scrape: always current).
fn record_usage(root: &Root) {
    gauge!("ftpd_staged_bytes").set(root.staged_bytes() as f64);
    let usage = root.usage();
    if let Some(quota) = usage.quota {
        gauge!("ftpd_quota_used_bytes").set(usage.bytes as f64);
        gauge!("ftpd_quota_limit_bytes").set(quota as f64);
    }
}

// ---------------------------------------------------------------------------------------------
// Health

/// Where the daemon is in its life, for `/readyz`: starting (0) until the listener accepts.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const SERVING: u8 = 1;
const DRAINING: u8 = 2;

impl Health {
    /// The main listener accepts connections.
    pub fn serving(&self) {
        self.0.store(SERVING, Ordering::SeqCst);
    }

    /// Shutdown has begun: no new connections, sessions in flight finishing.
    pub fn draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    fn state(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What `/users` serves: a JSON array, one object per user.
pub type UsersReport = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the metrics listener reads from the daemon.
#[derive(Clone)]
pub struct Observed {
    /// Renders the recorded metrics.
    pub handle: PrometheusHandle,
    /// Whether the main listener accepts, or the daemon drains.
    pub health: Arc<Health>,
    /// The store: the local root's usage for the gauges, and readiness.
    pub store: Store,
    /// The per-user figures.
    pub users: UsersReport,
}

// ---------------------------------------------------------------------------------------------
// The HTTP listener

/// Serves `listener` until the task is dropped: a few connections at once, each with a limit
/// on its headers' size and time, and on its lifetime.
pub async fn serve(listener: TcpListener, observed: Observed) {
    let observed = Arc::new(observed);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let upkeep = observed.handle.clone();
    let _upkeep = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    }));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection closed: too many at once");
            continue;
        };
        tokio::spawn(connection(tcp, peer, observed.clone(), slot));
    }
}

/// Aborts a background task when its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    observed: Arc<Observed>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |req| {
        let observed = observed.clone();
        async move { Ok::<_, Infallible>(respond(&observed, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                debug!(%peer, "metrics connection ended: {e}");
            }
        }
        () = tokio::time::sleep(MAX_LIFETIME) => {
            // Between requests it closes at once; a response in progress gets a moment.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
        }
    }
}

/// The answer to one request. Only GET (and HEAD) of the four paths; no request body.
async fn respond<B: Body>(observed: &Observed, req: Request<B>) -> Response<Full<Bytes>> {
    const PATHS: &[&str] = &["/metrics", "/healthz", "/readyz", "/users"];
    let path = req.uri().path();
    if !PATHS.contains(&path) {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if !req.body().is_end_stream() {
        // Nothing here takes a body: do not read one, and close rather than skip it.
        let mut response = plain(StatusCode::PAYLOAD_TOO_LARGE, "no request body accepted\n");
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    match path {
        "/metrics" => {
            if let Some(root) = observed.store.local() {
                record_usage(root);
            }
            let text = observed.handle.render();
            with_type(
                StatusCode::OK,
                text.into(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(observed).await {
            Ok(()) => plain(StatusCode::OK, "ready\n"),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        _ => {
            let users = (observed.users)();
            let body = serde_json::to_vec(&users).unwrap_or_else(|_| b"[]".to_vec());
            with_type(StatusCode::OK, body.into(), "application/json")
        }
    }
}

/// Ready: the main listener accepts, and the staging directory takes a new file.
async fn readiness(observed: &Observed) -> Result<(), &'static str> {
    match observed.health.state() {
        SERVING => {}
        DRAINING => return Err("not ready: shutting down\n"),
        _ => return Err("not ready: starting\n"),
    }
    let probe = match &observed.store {
        Store::Local(local) => {
            let root = local.root().clone();
            tokio::task::spawn_blocking(move || root.probe_writable())
        }
        // An object store's root listing: the service answers, with these credentials.
        Store::Remote(backend) => {
            let backend = backend.clone();
            tokio::spawn(async move { backend.check_dir(&storage::VPath::root()).await })
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => {
            warn!("readiness: {e}");
            Err("not ready: the storage root is not writable\n")
        }
        _ => Err("not ready: the storage root does not answer\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        Bytes::from_static(text.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn with_type(status: StatusCode, body: Bytes, kind: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    struct Fixture {
        observed: Observed,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = Root::open(&root, &dir.path().join("state")).unwrap();
        let users: UsersReport = Arc::new(|| serde_json::json!([]));
        Fixture {
            observed: Observed {
                // A recorder of the test's own, not installed: nothing global.
                handle: builder().build_recorder().handle(),
                health: Arc::default(),
                store: Store::Local(crate::store::LocalBackend::new(root).unwrap()),
                users,
            },
            _dir: dir,
        }
    }

    async fn get(observed: &Observed, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = respond(observed, req).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn routes_answer_get_and_nothing_else() {
        let f = fixture();
        f.observed.health.serving();
        let o = &f.observed;
        assert_eq!(get(o, Method::GET, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(o, Method::GET, "/metrics").await.0, StatusCode::OK);
        assert_eq!(get(o, Method::HEAD, "/metrics").await.0, StatusCode::OK);
        let (status, body) = get(o, Method::GET, "/users").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
        for path in ["/", "/metrics/", "/../etc/passwd", "/root", "/favicon.ico"] {
            assert_eq!(
                get(o, Method::GET, path).await.0,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let (status, _) = get(o, method.clone(), "/metrics").await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        }
    }

    #[tokio::test]
    async fn a_request_body_is_refused() {
        let f = fixture();
        let req = Request::builder()
            .uri("/healthz")
            .body(Full::new(Bytes::from_static(b"cmd=rm")))
            .unwrap();
        let response = respond(&f.observed, req).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn ready_only_while_serving_not_before_nor_while_draining() {
        let f = fixture();
        let o = &f.observed;
        let (status, body) = get(o, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        o.health.serving();
        assert_eq!(get(o, Method::GET, "/readyz").await.0, StatusCode::OK);
        o.health.draining();
        let (status, body) = get(o, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        assert_eq!(
            get(o, Method::GET, "/healthz").await.0,
            StatusCode::OK,
            "alive while draining"
        );
    }

    #[tokio::test]
    async fn not_ready_when_staging_is_gone() {
        let f = fixture();
        f.observed.health.serving();
        std::fs::remove_dir_all(f._dir.path().join("state").join("staging")).unwrap();
        let (status, body) = get(&f.observed, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not writable"), "{body}");
    }

    /// Over a real socket: headers past the cap are refused, not buffered.
    #[tokio::test]
    async fn oversized_headers_are_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, f.observed.clone()));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = "x".repeat(MAX_HEADER * 2);
        let req = format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
        // The server may close before it has read it all.
        let _ = tcp.write_all(req.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("the connection is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("200 OK"), "{answer}");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
        server.abort();
    }

    #[test]
    fn seconds_and_bytes_render_as_histograms() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            transfer(Direction::Upload, "ok", 3000, Duration::from_millis(20));
            transfer(Direction::Download, "checksum_mismatch", 10, Duration::ZERO);
        });
        let text = handle.render();
        for line in [
            "# TYPE ftpd_transfer_duration_seconds histogram",
            "# TYPE ftpd_transfer_size_bytes histogram",
            "ftpd_transfers_total{direction=\"upload\",outcome=\"ok\"} 1",
            "ftpd_bytes_received_total 3000",
            "ftpd_bytes_sent_total 10",
            "ftpd_chunk_digest_failures_total{direction=\"download\"} 1",
            "ftpd_transfer_size_bytes_bucket{direction=\"upload\",le=\"16384\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
