//! `pluresdb serve` and `pluresdb relay`: the HTTP server for the demo app,
//! the npm package, the HTTP API and the relay.
//!
//! This module owns what sits in front of the routes: the accept loop
//! (connection cap, header-read and idle timeout, write-stall timeout,
//! graceful shutdown on Ctrl-C), the `Host`/`Origin` allow-lists that stop
//! DNS rebinding and foreign pages, and the refusal to serve a non-loopback
//! address without a token. The routes themselves are in [`super::http`]
//! (the API) and [`crate::relay`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

use super::{http, DatabaseOptions, Failure, RelayArgs, RelayOptions, ServeArgs};
use crate::relay::RelayServer;
use crate::transport::RelayConnector;

/// How long in-flight requests get to finish after Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection limits shared by `serve` and `relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Open connections at most (WebSockets and event streams included); a
    /// connection over the cap is closed at once. Keep it under the
    /// process's descriptor limit (`ulimit -n`), which the database, the
    /// relay backlog and the listener also use.
    #[arg(id = "http_max_connections", long = "max-connections", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Milliseconds a client has to send a request's headers; also how long
    /// an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_timeout_ms: u64,
    /// Milliseconds a connection may refuse to take the bytes the server
    /// writes (a client that stops reading) before it is closed.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub write_timeout_ms: u64,
}

/// The `Host` names and page origins a server answers.
#[derive(Debug)]
pub struct Allowed {
    /// Lower-case host names without port; IPv6 addresses in brackets.
    hosts: Vec<String>,
    /// Lower-case `scheme://host[:port]`.
    origins: Vec<String>,
}

/// `Host`-style name without port: lower case, IPv6 in brackets, no
/// trailing dot. `None` when it is not a plausible host.
fn host_name(authority: &str) -> Option<String> {
    let authority = authority.trim().to_ascii_lowercase();
    if let Ok(ip) = authority.parse::<Ipv6Addr>() {
        return Some(format!("[{ip}]"));
    }
    let name = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let ip: Ipv6Addr = authority[1..end].parse().ok()?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(format!("[{ip}]"));
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => authority.as_str(),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    valid.then(|| name.to_owned())
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// `scheme://host[:port]` of an origin or URL, lower case.
fn origin_of(url: &str) -> Option<(String, String)> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?.as_str();
    if authority.contains('@') {
        return None;
    }
    let host = host_name(authority)?;
    let origin = match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    Some((origin, host))
}

impl Allowed {
    /// The defaults (`localhost`, `127.0.0.1`, `[::1]`, the bound address
    /// unless unspecified) plus `hosts` and `origins`.
    pub fn new(bound: IpAddr, hosts: &[String], origins: &[String]) -> Result<Self, Failure> {
        let mut allowed = Allowed {
            hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            origins: Vec::new(),
        };
        if !bound.is_unspecified() {
            allowed.hosts.push(match bound {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        for host in hosts {
            allowed.hosts.push(host_name(host).ok_or_else(|| {
                Failure::new(format!("--allow-host `{host}` is not a host name"))
            })?);
        }
        for origin in origins {
            let (origin, _) = origin_of(origin).ok_or_else(|| {
                Failure::new(format!(
                    "--allow-origin `{origin}` is not an origin like https://app.example"
                ))
            })?;
            allowed.origins.push(origin);
        }
        Ok(allowed)
    }

    fn host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h == name)
    }

    /// Why the request is refused, if it is.
    fn refuse(&self, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        let host = headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or(""))
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let Some(host) = host else {
            return Some("the request has no Host header".into());
        };
        match host_name(host) {
            Some(name) if self.host(&name) => {}
            Some(name) => {
                return Some(format!(
                    "Host `{name}` is not served here (start the server with --allow-host {name} to allow it)"
                ))
            }
            None => return Some("the Host header is not a host name".into()),
        }
        if let Some(authority) = uri.authority() {
            if !host_name(authority.as_str()).is_some_and(|name| self.host(&name)) {
                return Some("the request target's host is not served here".into());
            }
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or("");
        match origin_of(origin) {
            Some((origin, host)) if self.host(&host) || self.origins.contains(&origin) => None,
            Some((origin, _)) => Some(format!(
                "pages from {origin} may not use this server (start it with --allow-origin {origin} to allow them)"
            )),
            None => Some(format!("requests from origin `{origin}` are not allowed")),
        }
    }
}

/// Middleware: 403 unless `Host` and `Origin` are allowed.
async fn check_host_and_origin(
    State(allowed): State<Arc<Allowed>>,
    request: Request,
    next: Next,
) -> Response {
    match allowed.refuse(request.uri(), request.headers()) {
        Some(reason) => http::ApiError::forbidden(reason).into_response(),
        None => next.run(request).await,
    }
}

/// Builds the routes: `/relay` the sync relay, `/health` and `/api/*` the
/// HTTP API, `/pkg/*` the package directory, everything else the app. Every
/// route checks `Host` and `Origin`; all but `/relay` and `/api/events`
/// have a time limit.
pub fn router(
    args: &ServeArgs,
    relay: &RelayServer,
    api: http::ApiState,
    allowed: Arc<Allowed>,
) -> Router {
    let timed = http::router(api.clone(), args.max_body)
        .nest_service("/pkg", ServeDir::new(&args.pkg))
        .fallback_service(ServeDir::new(&args.www).append_index_html_on_directories(true))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(args.request_timeout_ms),
        ))
        .layer(middleware::map_response(http::timeout_as_json));
    Router::new()
        .nest("/relay", relay.router())
        .merge(http::event_router(api))
        .merge(timed)
        .layer(middleware::from_fn_with_state(
            allowed,
            check_host_and_origin,
        ))
}

async fn relay_server(options: &RelayOptions) -> io::Result<RelayServer> {
    RelayServer::open(options.config()?)
        .await
        .map_err(io::Error::other)
}

async fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("pluresdb: shutting down");
}

/// A client connection: holds its slot under the connection cap for as
/// long as it is open (through a WebSocket upgrade too), and fails a write
/// the peer has not taken for the write timeout.
struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    write_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    /// A write is pending: fail once it has been for the write timeout.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `stop` resolves, then sets `closing`
/// (event streams end), lets in-flight requests finish for up to
/// [`SHUTDOWN_GRACE`] and returns. HTTP/1.1 over hyper with upgrades (the
/// relay's WebSocket); at most `limits.max_connections` connections.
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    stop: impl Future<Output = ()>,
    closing: watch::Sender<bool>,
) {
    let cap = usize::try_from(limits.max_connections)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(cap));
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
        .keep_alive(true);
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, most likely: back off rather
                        // than spin; waiting clients stay in the backlog.
                        tracing::warn!("accepting a connection failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!("{refused} connections refused: over --max-connections {cap}");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(Connection {
                    stream,
                    _slot: slot,
                    write_timeout,
                    stalled: None,
                });
                let connection = builder
                    .serve_connection(io, TowerToHyperService::new(app.clone()))
                    .with_upgrades();
                let mut closing = closing.subscribe();
                connections.spawn(async move {
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = http::closed(&mut closing) => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open after {SHUTDOWN_GRACE:?}; closing them",
            connections.len()
        );
        connections.abort_all();
    }
}

/// `GET /health` of `pluresdb relay`: 200 when the relay can keep
/// envelopes, 503 (with the reason) when its storage (Redis) does not
/// answer, so a load balancer sends clients elsewhere.
async fn relay_health(relay: RelayServer) -> Response {
    match relay.check_storage().await {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ok" })).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unavailable", "error": error })),
        )
            .into_response(),
    }
}

/// `pluresdb relay`: the relay alone, until the process is stopped.
pub async fn run_relay(args: RelayArgs) -> io::Result<()> {
    let relay = relay_server(&args.relay).await?;
    let listener = listen(SocketAddr::new(args.host, args.port)).await?;
    let address = listener.local_addr()?;
    println!("PluresDB relay listening on ws://{address}/relay");
    let app = Router::new().nest("/relay", relay.router()).route(
        "/health",
        axum::routing::get(move || relay_health(relay.clone())),
    );
    let (closing, _) = watch::channel(false);
    serve_connections(listener, app, &args.limits, ctrl_c(), closing).await;
    Ok(())
}

/// Refuses a non-loopback address without a token (before anything is
/// opened or bound), unless `--insecure-no-token` says so.
fn check_exposure(args: &ServeArgs) -> Result<(), Failure> {
    if args.token.as_deref() == Some("") {
        return Err(Failure::new(
            "--token (or PLURESDB_TOKEN) is empty; give a secret or leave it unset",
        ));
    }
    if args.host.is_loopback() || args.token.is_some() {
        return Ok(());
    }
    if !args.insecure_no_token {
        return Err(Failure::new(format!(
            "refusing to serve on {} without a token: it is not a loopback address, so anyone \
             who can reach it could read and write the database. Pass --token <secret> (or set \
             PLURESDB_TOKEN), bind --host 127.0.0.1, or pass --insecure-no-token to accept the risk",
            args.host
        )));
    }
    eprintln!(
        "pluresdb: WARNING: serving on {} with NO TOKEN (--insecure-no-token): anyone who can \
         reach this address can read, change and delete every record",
        args.host
    );
    Ok(())
}

/// Where this process reaches its own listener at `address`.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

/// Serves until the process is stopped.
pub async fn run(args: ServeArgs, options: DatabaseOptions) -> Result<(), Failure> {
    check_exposure(&args)?;
    let allowed = Arc::new(Allowed::new(
        args.host,
        &args.allow_hosts,
        &args.allow_origins,
    )?);
    for (what, dir) in [("app", &args.www), ("package", &args.pkg)] {
        if !dir.is_dir() {
            return Err(Failure::new(format!(
                "the {what} directory {} does not exist (run `npm run build` first, or pass --{})",
                dir.display(),
                if what == "app" { "www" } else { "pkg" }
            )));
        }
    }
    let db = options.open().await?;
    let relay = relay_server(&args.relay).await?;
    let listener = listen(args.address()).await?;
    let address = listener.local_addr()?;
    let sync = if args.sync {
        let own = reachable(address);
        Some(db.sync(RelayConnector::new(format!("ws://{own}/relay")))?)
    } else {
        None
    };
    let (closing, closing_receiver) = watch::channel(false);
    let api = http::ApiState {
        db: db.clone(),
        token: args.token.clone(),
        event_streams: Arc::new(Semaphore::new(args.max_event_streams as usize)),
        closing: closing_receiver,
    };
    println!(
        "PluresDB is serving on http://{address}/ (API: /api, relay: ws://{address}/relay, database: {})",
        options.path()?.display()
    );
    let app = router(&args, &relay, api, allowed);
    serve_connections(listener, app, &args.limits, ctrl_c(), closing).await;
    drop(sync);
    db.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::super::Cli::command().debug_assert();
    }

    #[test]
    fn host_names_are_normalised() {
        assert_eq!(host_name("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_name("::1").as_deref(), Some("[::1]"));
        assert_eq!(host_name("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host_name("a b"), None);
        assert_eq!(host_name("host:port"), None);
        assert_eq!(host_name("[::1]x"), None);
        assert_eq!(
            origin_of("HTTP://App.Example:8443/path"),
            Some(("http://app.example:8443".into(), "app.example".into()))
        );
        assert_eq!(origin_of("null"), None);
    }

    #[test]
    fn only_allowed_hosts_and_origins_pass() {
        let allowed = Allowed::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            &["db.lan".into()],
            &["https://app.example".into()],
        )
        .unwrap();
        let check = |host: &str, origin: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, origin.parse().unwrap());
            }
            allowed.refuse(&Uri::from_static("/api/status"), &headers)
        };
        for host in [
            "localhost:1",
            "127.0.0.1",
            "[::1]:8080",
            "10.0.0.2:80",
            "DB.lan",
        ] {
            assert_eq!(check(host, None), None, "{host}");
        }
        assert!(check("evil.example", None)
            .unwrap()
            .contains("--allow-host"));
        assert!(check("localhost.evil.example", None).is_some());
        assert_eq!(check("localhost", Some("http://localhost:3000")), None);
        assert_eq!(check("localhost", Some("https://app.example")), None);
        assert!(check("localhost", Some("http://evil.example")).is_some());
        assert!(check("localhost", Some("https://app.example:444")).is_some());
        assert!(check("localhost", Some("null")).is_some());
        let unspecified = Allowed::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), &[], &[]).unwrap();
        assert!(unspecified
            .refuse(&Uri::from_static("http://0.0.0.0/"), &HeaderMap::new())
            .is_some());
    }
}
