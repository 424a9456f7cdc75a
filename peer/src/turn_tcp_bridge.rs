//! TURN over TCP for `webrtc`, which only speaks TURN over UDP.
//!
//! `webrtc` 0.21.1 skips `turn:...?transport=tcp` URLs, so a peer behind a firewall that blocks
//! UDP could never reach the relay. This module owns a local bridge per such URL: a UDP socket
//! on `127.0.0.1:0` that `webrtc` is handed instead (`turn:127.0.0.1:PORT?transport=udp`, same
//! credentials), and, per local UDP source (one per `webrtc` allocation), a TCP connection to
//! the real relay. Datagrams go up the stream with RFC 6062 / RFC 8656 §11.5 framing (a STUN
//! message is self-delimiting by its 20-byte header and length; ChannelData by its 4-byte
//! header, padded to a multiple of 4 bytes on streams) and come back as single datagrams with
//! the padding stripped. `turns:` URLs get the same bridge over TLS (rustls, ring), verified
//! against the system CA bundle plus the extra CA files (`tls_roots`). UDP TURN URLs are left
//! as they are.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use relay_proto::framing;
use signaling::protocol::IceServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::ice_servers::TurnUrl;
use crate::tls_roots;

/// Bound on connecting to the relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Local UDP sources (allocations) one bridge serves at once.
const MAX_CLIENTS: usize = 32;
/// Datagrams queued towards one stream (while it connects or is slow) before dropping, as UDP
/// would.
const UPSTREAM_QUEUE: usize = 256;
/// Largest datagram read from `webrtc`.
const MAX_DATAGRAM: usize = 65_535;
/// How long a stream stays after its allocation was deleted (a Refresh with LIFETIME 0), for
/// the relay's answer to come back.
const DEALLOCATION_GRACE: Duration = Duration::from_secs(2);
/// A stream whose allocation sent nothing for this long is closed: a live allocation refreshes
/// itself (and its permissions, every 5 minutes) well within it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(11 * 60);

/// A TURN URL over a stream (`turn:...?transport=tcp` or `turns:`), split into what the bridge
/// connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamTurnUrl {
    /// Host name or IP literal (without IPv6 brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `turns:`: TLS over TCP.
    pub(crate) tls: bool,
}

impl StreamTurnUrl {
    /// Parses `turn:HOST[:PORT]?transport=tcp` and `turns:HOST[:PORT][?transport=tcp]`;
    /// `None` for any other URL.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let url = TurnUrl::parse(url)?;
        let stream = match &url.transport {
            Some(transport) => transport.eq_ignore_ascii_case("tcp"),
            None => url.tls,
        };
        stream.then_some(Self {
            host: url.host,
            port: url.port,
            tls: url.tls,
        })
    }
}

/// The bridges of one peer connection, one per TCP TURN URL, kept across ICE server updates
/// (an allocation made through a bridge keeps using it after its credentials are refreshed).
pub(crate) struct TurnTcpBridges {
    bridges: HashMap<String, Bridge>,
    /// Extra CA files (PEM) trusted for `turns:` besides the system bundle.
    extra_ca: Vec<PathBuf>,
    /// Built on the first `turns:` URL.
    tls: Option<TlsConnector>,
}

struct Bridge {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TurnTcpBridges {
    pub(crate) fn new(extra_ca: Vec<PathBuf>) -> Self {
        Self {
            bridges: HashMap::new(),
            extra_ca,
            tls: None,
        }
    }

    /// The ICE servers to hand `webrtc`: every TCP TURN URL replaced by its local bridge's UDP
    /// URL (started on first use), everything else unchanged. A bridge that cannot bind keeps
    /// the original URL (which `webrtc` then skips, as before).
    pub(crate) async fn map(&mut self, servers: &[IceServer]) -> Vec<IceServer> {
        let mut mapped = Vec::with_capacity(servers.len());
        for server in servers {
            let mut urls = Vec::with_capacity(server.urls.len());
            for url in &server.urls {
                urls.push(self.bridged_url(url).await.unwrap_or_else(|| url.clone()));
            }
            mapped.push(IceServer {
                urls,
                username: server.username.clone(),
                credential: server.credential.clone(),
            });
        }
        mapped
    }

    /// The TURN URL a local bridge URL stands for: `url` as `webrtc` reports it for a relayed
    /// candidate (`turn:127.0.0.1:PORT?transport=udp`) mapped back to the TCP or TLS URL the
    /// bridge connects to; `None` when `url` is not one of our bridges.
    pub(crate) fn original_url(&self, url: &str) -> Option<&str> {
        let url = TurnUrl::parse(url)?;
        let ip: IpAddr = url.host.parse().ok()?;
        let local = SocketAddr::new(ip, url.port);
        self.bridges
            .iter()
            .find(|(_, bridge)| bridge.local == local)
            .map(|(original, _)| original.as_str())
    }

    async fn bridged_url(&mut self, url: &str) -> Option<String> {
        let target = StreamTurnUrl::parse(url)?;
        if let Some(bridge) = self.bridges.get(url)
            && !bridge.task.is_finished()
        {
            return Some(local_url(bridge.local));
        }
        let tls = if target.tls {
            if self.tls.is_none() {
                match tls_roots::client_config(self.extra_ca.iter().map(PathBuf::as_path)) {
                    Ok(config) => self.tls = Some(TlsConnector::from(config)),
                    Err(err) => {
                        tracing::warn!(%url, "cannot set up TLS for TURN: {err}");
                        return None;
                    }
                }
            }
            self.tls.clone()
        } else {
            None
        };
        match start(target, tls).await {
            Ok(bridge) => {
                tracing::debug!(%url, local = %bridge.local, "TURN over TCP bridged");
                let local = bridge.local;
                self.bridges.insert(url.to_owned(), bridge);
                Some(local_url(local))
            }
            Err(err) => {
                tracing::warn!(%url, "cannot start the TURN over TCP bridge: {err}");
                None
            }
        }
    }
}

fn local_url(local: SocketAddr) -> String {
    format!("turn:{local}?transport=udp")
}

async fn start(target: StreamTurnUrl, tls: Option<TlsConnector>) -> io::Result<Bridge> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let local = socket.local_addr()?;
    let task = tokio::spawn(serve(Arc::new(socket), Arc::new(target), tls));
    Ok(Bridge { local, task })
}

/// Reads datagrams from `webrtc` and hands each to the stream of its source address.
async fn serve(socket: Arc<UdpSocket>, target: Arc<StreamTurnUrl>, tls: Option<TlsConnector>) {
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // ICMP errors surface here on Linux; the socket stays usable.
                tracing::debug!("TURN bridge receive: {err}");
                continue;
            }
        };
        let Some(frame) = frame_for_stream(&buf[..len]) else {
            tracing::debug!(%from, len, "TURN bridge: datagram is neither STUN nor ChannelData");
            continue;
        };
        clients.retain(|_, tx| !tx.is_closed());
        let tx = match clients.get(&from) {
            Some(tx) => tx.clone(),
            None => {
                if clients.len() >= MAX_CLIENTS {
                    tracing::warn!(%from, "TURN bridge: too many local allocations, dropped");
                    continue;
                }
                let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
                tokio::spawn(client(
                    socket.clone(),
                    from,
                    target.clone(),
                    tls.clone(),
                    rx,
                ));
                clients.insert(from, tx.clone());
                tx
            }
        };
        if tx.try_send(frame).is_err() {
            tracing::debug!(%from, "TURN bridge: stream backlog full, datagram dropped");
        }
    }
}

/// One local allocation: a TCP connection to the relay carrying its datagrams both ways.
async fn client(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    target: Arc<StreamTurnUrl>,
    tls: Option<TlsConnector>,
    mut upstream: mpsc::Receiver<Vec<u8>>,
) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&target, tls)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(host = %target.host, port = target.port, tls = target.tls, "TURN over TCP connect failed: {err}");
            return;
        }
        Err(_) => {
            tracing::warn!(host = %target.host, port = target.port, tls = target.tls, "TURN over TCP connect timed out");
            return;
        }
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Ends when `webrtc` deletes the allocation (every ICE restart does) or forgets it: each
    // restart makes new allocations, and the streams of the old ones must not pile up.
    let up = async {
        loop {
            let Ok(Some(frame)) = tokio::time::timeout(IDLE_TIMEOUT, upstream.recv()).await else {
                return Ok(());
            };
            writer.write_all(&frame).await?;
            if is_deallocation(&frame) {
                tokio::time::sleep(DEALLOCATION_GRACE).await;
                return Ok::<_, io::Error>(());
            }
        }
    };
    let down = async {
        loop {
            let message = read_stream_message(&mut reader).await?;
            socket.send_to(&message, local).await?;
        }
    };
    let result: io::Result<()> = tokio::select! {
        result = up => result,
        result = down => result,
    };
    match result {
        Ok(()) => tracing::debug!(%local, "TURN over TCP bridge stream closed"),
        Err(err) => tracing::debug!(%local, "TURN over TCP bridge stream ended: {err}"),
    }
}

/// Whether `frame` deletes its allocation: a Refresh request with LIFETIME 0 (RFC 8656
/// section 7.2).
fn is_deallocation(frame: &[u8]) -> bool {
    use relay_proto::message::{Class, StunMessage};
    use relay_proto::{AttributeType, Method};
    // Every relayed datagram passes here: only a Refresh request's type (0x0004) is parsed.
    frame.starts_with(&[0x00, 0x04])
        && StunMessage::parse(frame).is_ok_and(|message| {
            message.method() == Some(Method::Refresh)
                && message.class() == Class::Request
                && message.get(AttributeType::Lifetime) == Some(&[0, 0, 0, 0][..])
        })
}

/// A byte stream to the relay: plain TCP or TLS.
trait RelayStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RelayStream for T {}

async fn connect(
    target: &StreamTurnUrl,
    tls: Option<TlsConnector>,
) -> io::Result<Pin<Box<dyn RelayStream>>> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Box::pin(tcp)),
        Some(connector) => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
            Ok(Box::pin(connector.connect(name, tcp).await?))
        }
    }
}

/// A datagram as written on a stream: STUN as is, ChannelData padded to a multiple of 4
/// bytes (RFC 8656 §12.5, `relay_proto::framing`). `None` for anything else or a truncated
/// message.
fn frame_for_stream(datagram: &[u8]) -> Option<Vec<u8>> {
    let message = datagram.get(..framing::message_len(datagram).ok()??)?;
    let mut frame = message.to_vec();
    frame.resize(framing::stream_frame_len(datagram).ok()??, 0);
    Some(frame)
}

/// Reads one message off a stream, without the ChannelData padding.
pub(crate) async fn read_stream_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let (Ok(Some(total)), Ok(Some(keep))) = (
        framing::stream_frame_len(&header),
        framing::message_len(&header),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "relay sent neither STUN nor ChannelData",
        ));
    };
    let mut message = vec![0u8; total];
    message[..4].copy_from_slice(&header);
    reader.read_exact(&mut message[4..]).await?;
    message.truncate(keep);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ice_servers::{DEFAULT_TURN_PORT, DEFAULT_TURNS_PORT};

    #[test]
    fn a_refresh_with_lifetime_zero_deletes_the_allocation() {
        use relay_proto::message::{Class, MessageBuilder, TransactionId};
        use relay_proto::{AttributeType, Method};
        let refresh = |method: Method, class: Class, lifetime: u32| {
            let mut message = MessageBuilder::new(method, class, TransactionId([7; 12]));
            message.add(AttributeType::Lifetime, &lifetime.to_be_bytes());
            message.finish()
        };
        assert!(is_deallocation(&refresh(
            Method::Refresh,
            Class::Request,
            0
        )));
        assert!(!is_deallocation(&refresh(
            Method::Refresh,
            Class::Request,
            600
        )));
        assert!(!is_deallocation(&refresh(
            Method::Refresh,
            Class::Success,
            0
        )));
        assert!(!is_deallocation(&refresh(
            Method::Allocate,
            Class::Request,
            0
        )));
        assert!(!is_deallocation(&[0x40, 0x00, 0x00, 0x04, 0, 0, 0, 0]));
    }

    #[test]
    fn only_tcp_turn_urls_are_bridged() {
        assert_eq!(
            StreamTurnUrl::parse("turn:127.0.0.1:3478?transport=tcp"),
            Some(StreamTurnUrl {
                host: "127.0.0.1".into(),
                port: 3478,
                tls: false,
            })
        );
        assert_eq!(
            StreamTurnUrl::parse("turn:relay.example.org?transport=tcp"),
            Some(StreamTurnUrl {
                host: "relay.example.org".into(),
                port: DEFAULT_TURN_PORT,
                tls: false,
            })
        );
        assert_eq!(
            StreamTurnUrl::parse("turn:[::1]:5000?transport=tcp"),
            Some(StreamTurnUrl {
                host: "::1".into(),
                port: 5000,
                tls: false,
            })
        );
        assert_eq!(
            StreamTurnUrl::parse("turns:relay.example.org"),
            Some(StreamTurnUrl {
                host: "relay.example.org".into(),
                port: DEFAULT_TURNS_PORT,
                tls: true,
            })
        );
        assert_eq!(
            StreamTurnUrl::parse("turns:127.0.0.1:5350?transport=tcp"),
            Some(StreamTurnUrl {
                host: "127.0.0.1".into(),
                port: 5350,
                tls: true,
            })
        );
        assert_eq!(
            StreamTurnUrl::parse("turns:127.0.0.1:5350?transport=udp"),
            None
        );
        assert_eq!(
            StreamTurnUrl::parse("turn:127.0.0.1:3478?transport=udp"),
            None
        );
        assert_eq!(StreamTurnUrl::parse("turn:127.0.0.1:3478"), None);
        assert_eq!(StreamTurnUrl::parse("stun:127.0.0.1:3478"), None);
        assert_eq!(StreamTurnUrl::parse("turn::3478?transport=tcp"), None);
        assert_eq!(StreamTurnUrl::parse("turn:h:notaport?transport=tcp"), None);
    }

    #[test]
    fn channel_data_is_padded_on_the_stream_and_stun_is_not() {
        // ChannelData, channel 0x4000, 5 bytes of data: padded to 12.
        let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5];
        let framed = frame_for_stream(&cd).unwrap_or_default();
        assert_eq!(framed.len(), 12);
        assert_eq!(&framed[..9], &cd);
        assert_eq!(&framed[9..], &[0, 0, 0]);
        // A STUN binding request (20-byte header, no attributes).
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        assert_eq!(frame_for_stream(&stun), Some(stun.clone()));
        // Truncated or foreign datagrams are refused.
        assert_eq!(frame_for_stream(&cd[..6]), None);
        assert_eq!(frame_for_stream(&stun[..12]), None);
        assert_eq!(frame_for_stream(&[0x80, 0, 0, 0]), None);
    }

    #[tokio::test]
    async fn stream_messages_are_split_and_unpadded() {
        let mut stun = vec![0x01, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[9; 12]);
        stun.extend_from_slice(&[0xAA; 4]);
        let cd = [0x40, 0x01, 0x00, 0x03, 1, 2, 3];
        let mut stream = Vec::new();
        stream.extend_from_slice(&frame_for_stream(&cd).unwrap_or_default());
        stream.extend_from_slice(&stun);
        stream.extend_from_slice(&frame_for_stream(&cd).unwrap_or_default());
        let mut reader = &stream[..];
        assert_eq!(
            read_stream_message(&mut reader).await.ok(),
            Some(cd.to_vec())
        );
        assert_eq!(read_stream_message(&mut reader).await.ok(), Some(stun));
        assert_eq!(
            read_stream_message(&mut reader).await.ok(),
            Some(cd.to_vec())
        );
        assert!(read_stream_message(&mut reader).await.is_err());
        let mut garbage = &[0xC0u8, 0, 0, 0][..];
        assert!(read_stream_message(&mut garbage).await.is_err());
    }
}
