//! Why a TURN server gives no relayed candidate. `webrtc`'s ICE agent only logs a refused or
//! unanswered Allocate, so a relay-only connection that fails says nothing useful; this module
//! makes one Allocate of its own with the credentials signaling handed out (RFC 8656 section
//! 7.1, long-term credentials of RFC 8489 section 9.2), releases what it got, and names the
//! outcome. UDP and TCP (`transport=tcp`); `turns:` is not checked.

use std::fmt;
use std::time::Duration;

use relay_proto::attributes::decode_error_code;
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{AttributeType, Method};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::ice_servers::TurnUrl;
use crate::turn_tcp_bridge::read_stream_message;

/// How long a check waits for each answer (a UDP request is sent again once within it).
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// REQUESTED-TRANSPORT: UDP (protocol 17).
const UDP_RELAY: [u8; 4] = [17, 0, 0, 0];

/// What one Allocate got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TurnOutcome {
    /// An allocation (released again): the server and the credentials work.
    Allocated,
    /// The server answered with an error (401: the credentials are not accepted).
    Refused { code: u16, reason: String },
    /// No answer within the wait.
    NoAnswer,
    /// The server could not be reached (name, socket or connection error).
    Unreachable(String),
}

impl fmt::Display for TurnOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allocated => f.write_str("allocates"),
            Self::Refused { code: 401, .. } => f.write_str(
                "refused the credentials (401 Unauthorized): signaling's --turn-secret is not \
                 the relay's",
            ),
            Self::Refused { code, reason } if reason.is_empty() => {
                write!(f, "refused the allocation ({code})")
            }
            Self::Refused { code, reason } => write!(f, "refused the allocation ({code} {reason})"),
            Self::NoAnswer => write!(f, "no answer within {} s", ANSWER_WAIT.as_secs()),
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// One Allocate on the TURN server of `url` as `username`/`password`; `None` for a URL this
/// module does not check (`turns:`, or one that does not parse).
pub(crate) async fn check(url: &str, username: &str, password: &str) -> Option<TurnOutcome> {
    let parsed = TurnUrl::parse(url)?;
    if parsed.tls {
        return None;
    }
    let server = parsed.server();
    let mut link = match parsed.transport.as_deref() {
        Some("tcp") => match timeout(ANSWER_WAIT, TcpStream::connect(&server)).await {
            Ok(Ok(stream)) => Link::Tcp(stream),
            Ok(Err(err)) => return Some(TurnOutcome::Unreachable(err.to_string())),
            Err(_) => return Some(TurnOutcome::NoAnswer),
        },
        _ => match udp_link(&server).await {
            Ok(socket) => Link::Udp(socket),
            Err(err) => return Some(TurnOutcome::Unreachable(err.to_string())),
        },
    };
    Some(allocate(&mut link, username, password).await)
}

async fn udp_link(server: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(server)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the name has no address"))?;
    let local = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// The two-step Allocate (the first answer names the realm and nonce), then a Refresh with
/// LIFETIME 0 that releases the allocation.
async fn allocate(link: &mut Link, username: &str, password: &str) -> TurnOutcome {
    let mut first = MessageBuilder::new(Method::Allocate, Class::Request, new_tid());
    first.add(AttributeType::RequestedTransport, &UDP_RELAY);
    let answer = match link.ask(&first.finish()).await {
        Ok(answer) => answer,
        Err(outcome) => return outcome,
    };
    let Ok(message) = StunMessage::parse(&answer) else {
        return TurnOutcome::Unreachable("the server's answer is not STUN".into());
    };
    match message.class() {
        Class::Success => {
            // No authentication asked: an open relay. Released below without credentials.
            let mut release = MessageBuilder::new(Method::Refresh, Class::Request, new_tid());
            release.add(AttributeType::Lifetime, &0u32.to_be_bytes());
            let _ = link.ask(&release.finish()).await;
            return TurnOutcome::Allocated;
        }
        Class::Error => {}
        _ => return TurnOutcome::Unreachable("the server's answer is not STUN".into()),
    }
    let (Some(realm), Some(nonce)) = (
        message.get(AttributeType::Realm),
        message.get(AttributeType::Nonce),
    ) else {
        return refused(&message);
    };
    let realm = String::from_utf8_lossy(realm).into_owned();
    let nonce = nonce.to_vec();
    let key = long_term_key(username, &realm, password);
    let signed = |method: Method, extra: &dyn Fn(&mut MessageBuilder)| {
        let mut request = MessageBuilder::new(method, Class::Request, new_tid());
        extra(&mut request);
        request
            .add(AttributeType::Username, username.as_bytes())
            .add(AttributeType::Realm, realm.as_bytes())
            .add(AttributeType::Nonce, &nonce)
            .add_message_integrity(&key);
        request.finish()
    };
    let second = signed(Method::Allocate, &|m| {
        m.add(AttributeType::RequestedTransport, &UDP_RELAY);
    });
    let answer = match link.ask(&second).await {
        Ok(answer) => answer,
        Err(outcome) => return outcome,
    };
    let Ok(message) = StunMessage::parse(&answer) else {
        return TurnOutcome::Unreachable("the server's answer is not STUN".into());
    };
    if message.class() != Class::Success {
        return refused(&message);
    }
    let release = signed(Method::Refresh, &|m| {
        m.add(AttributeType::Lifetime, &0u32.to_be_bytes());
    });
    let _ = link.ask(&release).await;
    TurnOutcome::Allocated
}

fn refused(message: &StunMessage<'_>) -> TurnOutcome {
    match message
        .get(AttributeType::ErrorCode)
        .and_then(|value| decode_error_code(value).ok())
    {
        Some(error) => TurnOutcome::Refused {
            code: error.code,
            reason: error.reason.to_owned(),
        },
        None => TurnOutcome::Unreachable("an error answer without ERROR-CODE".into()),
    }
}

fn new_tid() -> TransactionId {
    TransactionId(rand::random())
}

/// A connected UDP socket or a TCP stream to the server.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Link {
    /// Sends `request` and returns the answer with the same transaction id.
    async fn ask(&mut self, request: &[u8]) -> Result<Vec<u8>, TurnOutcome> {
        let tid = &request[8..20];
        let unreachable = |err: std::io::Error| TurnOutcome::Unreachable(err.to_string());
        match self {
            Self::Udp(socket) => {
                // Sent twice at most: at once and after half the wait (RFC 8489's
                // retransmission, shortened: this is a diagnosis, not a call).
                for _ in 0..2 {
                    socket.send(request).await.map_err(unreachable)?;
                    let mut buf = vec![0u8; 2048];
                    let got = timeout(ANSWER_WAIT / 2, async {
                        loop {
                            let n = socket.recv(&mut buf).await?;
                            if n >= 20 && &buf[8..20] == tid {
                                return Ok::<_, std::io::Error>(buf[..n].to_vec());
                            }
                        }
                    })
                    .await;
                    match got {
                        Ok(Ok(answer)) => return Ok(answer),
                        Ok(Err(err)) => return Err(unreachable(err)),
                        Err(_) => continue,
                    }
                }
                Err(TurnOutcome::NoAnswer)
            }
            Self::Tcp(stream) => {
                stream.write_all(request).await.map_err(unreachable)?;
                let read = async {
                    loop {
                        let message = read_stream_message(stream).await?;
                        if message.len() >= 20 && &message[8..20] == tid {
                            return Ok::<_, std::io::Error>(message);
                        }
                    }
                };
                match timeout(ANSWER_WAIT, read).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(err)) => Err(unreachable(err)),
                    Err(_) => Err(TurnOutcome::NoAnswer),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_credentials_says_what_to_check() {
        let refused = TurnOutcome::Refused {
            code: 401,
            reason: String::new(),
        };
        assert!(refused.to_string().contains("--turn-secret"));
        let full = TurnOutcome::Refused {
            code: 508,
            reason: "Insufficient Capacity".into(),
        };
        assert_eq!(
            full.to_string(),
            "refused the allocation (508 Insufficient Capacity)"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_no_answer_and_turns_is_not_checked() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("turn:{}?transport=udp", silent.local_addr().expect("addr"));
        assert_eq!(check(&url, "u", "p").await, Some(TurnOutcome::NoAnswer));
        assert_eq!(
            check("turns:127.0.0.1:5349?transport=tcp", "u", "p").await,
            None
        );
    }
}
