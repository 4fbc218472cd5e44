//! `pluresdb serve` and `pluresdb relay`: the HTTP server for the demo app,
//! the npm package, the HTTP API and the relay.

use std::io;

use axum::Router;
use tower_http::services::ServeDir;

use super::{http, DatabaseOptions, Failure, RelayArgs, RelayOptions, ServeArgs};
use crate::relay::RelayServer;
use crate::transport::RelayConnector;

/// Builds the routes: `/relay` the sync relay, `/health` and `/api/*` the
/// HTTP API, `/pkg/*` the package directory, everything else the app.
pub fn router(args: &ServeArgs, relay: &RelayServer, api: http::ApiState) -> Router {
    Router::new()
        .nest("/relay", relay.router())
        .merge(http::router(api, args.max_body))
        .nest_service("/pkg", ServeDir::new(&args.pkg))
        .fallback_service(ServeDir::new(&args.www).append_index_html_on_directories(true))
}

fn relay_server(options: &RelayOptions) -> io::Result<RelayServer> {
    RelayServer::new(options.config()?).map_err(io::Error::other)
}

async fn listen(address: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("pluresdb: shutting down");
}

/// `pluresdb relay`: the relay alone, until the process is stopped.
pub async fn run_relay(args: RelayArgs) -> io::Result<()> {
    let relay = relay_server(&args.relay)?;
    let listener = listen(std::net::SocketAddr::new(args.host, args.port)).await?;
    let address = listener.local_addr()?;
    println!("PluresDB relay listening on ws://{address}/relay");
    let app = Router::new().nest("/relay", relay.router());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
}

/// Serves until the process is stopped.
pub async fn run(args: ServeArgs, options: DatabaseOptions) -> Result<(), Failure> {
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
    let relay = relay_server(&args.relay)?;
    let listener = listen(args.address()).await?;
    let address = listener.local_addr()?;
    let sync = if args.sync {
        Some(db.sync(RelayConnector::new(format!("ws://{address}/relay")))?)
    } else {
        None
    };
    let api = http::ApiState {
        db: db.clone(),
        token: args.token.clone(),
    };
    println!(
        "PluresDB is serving on http://{address}/ (API: /api, relay: ws://{address}/relay, database: {})",
        options.path()?.display()
    );
    axum::serve(listener, router(&args, &relay, api))
        .with_graceful_shutdown(shutdown())
        .await?;
    drop(sync);
    db.close().await?;
    Ok(())
}
