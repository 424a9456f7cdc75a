//! Integration tests of the real `relay` binary on loopback: reference clients (the `turn`
//! crate's client, coturn's turnutils), TLS, security rules, quotas, floods, metrics, drain.

mod amplification;
mod churn;
mod conformance;
mod coturn_clients;
mod drain;
mod embedded;
mod limits;
mod metrics_doc;
mod port_clash;
mod proxy_protocol;
mod reload;
mod security;
mod slow_reader;
mod startup_warnings;
mod stream_stress;
mod streams;
mod support;
mod tls;
mod turn_client;
