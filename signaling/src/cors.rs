//! Cross-origin access for browsers to what a page of another origin calls with `fetch`: the
//! HTTP transports (`/http...`, the JS client's fallbacks when WebSockets are blocked),
//! `/v1/ice-servers` and PeerJS's `GET /peerjs/{key}/id` (and `/peers`), which a `new Peer()`
//! fetches before it opens its socket. An origin is let in when `--allowed-origin` lists it,
//! or when the list is empty (as for the WebSocket upgrade); the handlers refuse the others
//! anyway (`forbidden`).
//! No cookies are involved (sessions and tokens travel in the URL or `Authorization`), so no
//! credentials mode.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::AppState;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of the cross-origin routes; reads `--allowed-origin` live (SIGHUP).
pub fn layer(app: Arc<AppState>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin
                .to_str()
                .is_ok_and(|origin| crate::client_request::origin_allowed(&app, origin))
        }))
        .allow_methods([Method::GET, Method::POST])
        // `Last-Event-ID`: a page that reads the event stream with `fetch` sets its position.
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
        ])
        // A 429 or 503 says when to come back.
        .expose_headers([header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE)
}
