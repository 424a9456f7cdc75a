//! The web demo: the files of `web-demo/`, embedded into the binary (or read from `--web-dir`
//! during development). `/` and `/r/{room}` serve `index.html`; other paths serve files.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::AppState;

#[derive(RustEmbed)]
#[folder = "../web-demo/"]
struct Embedded;

/// Where the demo's files come from.
#[derive(Debug, Clone)]
pub enum WebAssets {
    /// Compiled into the binary.
    Embedded,
    /// Read from this directory on every request (`--web-dir`).
    Dir(PathBuf),
}

impl WebAssets {
    /// The file at `path` (relative, `/`-separated): its bytes and MIME type.
    fn get(&self, path: &str) -> Option<(Vec<u8>, String)> {
        match self {
            Self::Embedded => Embedded::get(path)
                .map(|file| (file.data.into_owned(), file.metadata.mimetype().to_owned())),
            Self::Dir(root) => {
                let relative = Path::new(path);
                // Only plain names: no `..`, no absolute paths, no prefixes.
                if !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                {
                    return None;
                }
                let file = rust_embed::utils::read_file_from_fs(&root.join(relative)).ok()?;
                Some((file.data.into_owned(), file.metadata.mimetype().to_owned()))
            }
        }
    }

    fn respond(&self, path: &str) -> Response {
        match self.get(path) {
            Some((body, mime)) => (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                body,
            )
                .into_response(),
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        }
    }
}

/// `GET /` and `GET /r/{room}`: the demo page (it reads the room from the URL).
pub async fn index(State(app): State<Arc<AppState>>) -> Response {
    app.web.respond("index.html")
}

/// Any other `GET`: a file of the demo by path.
pub async fn file(State(app): State<Arc<AppState>>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.is_empty() {
        return app.web.respond("index.html");
    }
    app.web.respond(path)
}
