//! `pluresdb serve`: one HTTP server for the demo app and the npm package.

use std::io;

use axum::Router;
use tower_http::services::ServeDir;

use super::ServeArgs;
use crate::relay::RelayServer;

/// Builds the HTTP routes: `/relay` the sync relay, `/pkg/*` from the
/// package directory, everything else from the app directory.
pub fn router(args: &ServeArgs, relay: &RelayServer) -> Router {
    Router::new()
        .nest("/relay", relay.router())
        .nest_service("/pkg", ServeDir::new(&args.pkg))
        .fallback_service(ServeDir::new(&args.www).append_index_html_on_directories(true))
}

fn relay_server(options: &super::RelayOptions) -> io::Result<RelayServer> {
    RelayServer::new(options.config()?).map_err(io::Error::other)
}

async fn listen(address: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `pluresdb relay`: the relay alone, until the process is stopped.
pub async fn run_relay(args: super::RelayArgs) -> io::Result<()> {
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
pub async fn run(args: ServeArgs) -> io::Result<()> {
    for (what, dir) in [("app", &args.www), ("package", &args.pkg)] {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the {what} directory {} does not exist (run `npm run build` first, or pass --{})",
                    dir.display(),
                    if what == "app" { "www" } else { "pkg" }
                ),
            ));
        }
    }
    let relay = relay_server(&args.relay)?;
    let listener = listen(args.address()).await?;
    let address = listener.local_addr()?;
    println!("PluresDB is serving on http://{address}/ (relay: ws://{address}/relay)");
    axum::serve(listener, router(&args, &relay))
        .with_graceful_shutdown(shutdown())
        .await
}
