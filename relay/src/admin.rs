//! The admin HTTP server (loopback by default): `/healthz` (alive), `/readyz` (503 while
//! draining), `/metrics` (Prometheus text) and `/usage` (relayed bytes per user and room for a
//! time window, JSON or CSV). It has no credentials of its own: like the metrics, usage is
//! protected by where the listener binds (`--admin-listen`, 127.0.0.1 by default).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;
use crate::usage::{UsageReport, unix_now};

/// The admin routes over `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/usage", get(usage))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// `GET /usage?from=&to=` or `?since=`, `format=json|csv`, `by=user|room` (CSV only).
/// Signaling's `/v1/usage` parses and answers with the same [`UsageQuery`].
async fn usage(
    State(metrics): State<Arc<Metrics>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match UsageQuery::parse(&query, &headers, unix_now()) {
        Ok(query) => query.respond(&metrics.usage().report(query.from, query.to)),
        Err(refusal) => refusal.into_response(),
    }
}

/// A `/usage` query that does not parse: a 400 with its one-line reason.
#[derive(Debug)]
pub struct BadUsageQuery(String);

impl IntoResponse for BadUsageQuery {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{}\n", self.0)).into_response()
    }
}

/// A parsed `/usage` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    /// Window start, Unix seconds.
    pub from: u64,
    /// Window end (exclusive), Unix seconds.
    pub to: u64,
    /// CSV instead of JSON (`format=csv`, or `Accept: text/csv`).
    pub csv: bool,
    /// CSV lines per room instead of per user (`by=room`).
    pub by_room: bool,
}

impl UsageQuery {
    /// Reads `from`, `to` (Unix seconds), `since` (a duration back from `now`, instead of
    /// `from`), `format` and `by`; the `Accept` header chooses CSV when `format` is absent.
    /// A bad or unknown parameter is a 400 with a one-line reason (a misspelt `since` must not
    /// quietly widen a bill to everything kept).
    pub fn parse(
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Self, BadUsageQuery> {
        Self::read(query, headers, now).map_err(BadUsageQuery)
    }

    /// `report` as asked: JSON, or CSV per user or per room.
    pub fn respond(&self, report: &UsageReport) -> Response {
        if self.csv {
            (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                report.to_csv(self.by_room),
            )
                .into_response()
        } else {
            axum::Json(report).into_response()
        }
    }

    fn read(
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Self, String> {
        const KNOWN: [&str; 5] = ["from", "to", "since", "format", "by"];
        if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown parameter `{unknown}` (from, to, since, format, by)"
            ));
        }
        let secs = |name: &str| -> Result<Option<u64>, String> {
            query
                .get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("`{name}` must be Unix seconds, not `{v}`"))
                })
                .transpose()
        };
        let since = query
            .get("since")
            .map(|v| startup::duration::parse(v).map_err(|e| format!("`since`: {e}")))
            .transpose()?;
        let from = match (secs("from")?, since) {
            (Some(_), Some(_)) => return Err("give `from` or `since`, not both".into()),
            (Some(from), None) => from,
            (None, Some(since)) => now.saturating_sub(since.as_secs()),
            (None, None) => 0,
        };
        let to = secs("to")?.unwrap_or(u64::MAX);
        if to <= from {
            return Err("`to` must be after `from`".into());
        }
        let csv = match query.get("format").map(String::as_str) {
            Some("csv") => true,
            Some("json") => false,
            Some(other) => return Err(format!("`format` is json or csv, not `{other}`")),
            None => headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/csv")),
        };
        let by_room = match query.get("by").map(String::as_str) {
            None | Some("user") => false,
            Some("room") => true,
            Some(other) => return Err(format!("`by` is user or room, not `{other}`")),
        };
        Ok(Self {
            from,
            to,
            csv,
            by_room,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)], accept: Option<&str>) -> Result<UsageQuery, String> {
        let query = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, a.parse().unwrap());
        }
        UsageQuery::read(&query, &headers, 10_000)
    }

    #[test]
    fn windows_formats_and_refusals() {
        let q = parse(&[], None).unwrap();
        assert_eq!(
            (q.from, q.to, q.csv, q.by_room),
            (0, u64::MAX, false, false)
        );
        let q = parse(&[("since", "10m")], Some("text/csv")).unwrap();
        assert_eq!((q.from, q.csv), (9_400, true));
        let q = parse(
            &[
                ("from", "5"),
                ("to", "65"),
                ("format", "json"),
                ("by", "room"),
            ],
            Some("text/csv"),
        )
        .unwrap();
        assert_eq!((q.from, q.to, q.csv, q.by_room), (5, 65, false, true));
        assert!(parse(&[("from", "5"), ("since", "1m")], None).is_err());
        assert!(parse(&[("from", "x")], None).is_err());
        assert!(parse(&[("from", "9"), ("to", "9")], None).is_err());
        assert!(parse(&[("format", "xml")], None).is_err());
        assert!(parse(&[("by", "peer")], None).is_err());
    }
}
