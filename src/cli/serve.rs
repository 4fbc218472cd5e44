//! `pluresdb serve`: one HTTP server for the demo app and the npm package.

use std::io;

use axum::Router;
use tower_http::services::ServeDir;

use super::ServeArgs;

/// Builds the HTTP routes: `/pkg/*` from the package directory, everything
/// else from the app directory.
pub fn router(args: &ServeArgs) -> Router {
    Router::new()
        .nest_service("/pkg", ServeDir::new(&args.pkg))
        .fallback_service(ServeDir::new(&args.www).append_index_html_on_directories(true))
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
    let listener = tokio::net::TcpListener::bind(args.address())
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", args.address()),
            )
        })?;
    let address = listener.local_addr()?;
    println!("PluresDB is serving on http://{address}/");
    axum::serve(listener, router(&args))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
