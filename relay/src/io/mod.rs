//! The I/O layer: worker threads, each with its own tokio current-thread runtime, its own
//! SO_REUSEPORT listening sockets and one `relay_proto::Server` shard (no lock on the packet
//! path). `shard` moves bytes between sockets and the core, `driver` runs a worker, `udp` /
//! `send_batch` are the batched datagram syscalls, `relay_ports` binds relay sockets,
//! `stream` / `tcp` carry STUN/TURN over TCP and TLS, `http_upstream` forwards the HTTP
//! connections of a shared port (`--http-upstream`), `intake` takes streams another server of
//! the process accepted, `conn_limit` is the relay-wide
//! `--max-connections` counter, `port_probe` refuses ports another socket holds, `tasks`
//! tracks the tasks a stopping worker waits for, `drain` wakes a draining relay when its last
//! allocation ends, `settings` carries a reload's new settings to every shard.

pub(crate) mod conn_limit;
pub(crate) mod drain;
pub(crate) mod driver;
pub(crate) mod http_upstream;
pub(crate) mod intake;
pub(crate) mod port_probe;
pub(crate) mod relay_ports;
pub(crate) mod send_batch;
pub(crate) mod settings;
pub(crate) mod shard;
pub(crate) mod stream;
pub(crate) mod tasks;
pub(crate) mod tcp;
pub(crate) mod udp;
