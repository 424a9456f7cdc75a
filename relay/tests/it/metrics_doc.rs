//! The metrics reference in `docs/relay.md` is the contract: every series the relay exposes is
//! in its table.

use testkit::{documents, exposed_series};

use crate::support::{RelayProcess, TLS_ON_LOOPBACK};

#[test]
fn every_exposed_series_is_in_the_docs_table() {
    let doc = include_str!("../../../docs/relay.md");
    let relay = RelayProcess::start(&[&["--user", "u:p"], TLS_ON_LOOPBACK].concat());
    let (status, text) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    let series = exposed_series(&text);
    assert!(series.len() > 40, "{text}");
    let missing: Vec<&String> = series.iter().filter(|s| !documents(doc, s)).collect();
    assert!(missing.is_empty(), "not in docs/relay.md: {missing:?}");
}
