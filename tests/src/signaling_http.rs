//! A client of signaling's HTTP transports, written from `docs/protocol.md` ("When WebSockets
//! are blocked"): open, send, long-poll, and a Server-Sent Events reader. Every request is its
//! own connection, so each may reach another node. Shared by the signaling integration suite
//! (included by path) and the end-to-end tests.

#![allow(dead_code, unreachable_pub)] // Shared by two test crates; neither uses every request.

use std::net::SocketAddr;
use std::time::Duration;

use signaling::protocol::{ClientMessage, HttpOpened, PollReply, ServerFrame};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// How long any one step (a reply, an event) may take.
const STEP: Duration = Duration::from_secs(5);

/// One HTTP/1.1 request with `Connection: close`: (status, content-type, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let (head, body) = http_exchange(addr, method, path, headers, body).await;
    let status = testkit::status_code(&head);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body)
}

/// One HTTP/1.1 request with `Connection: close`: the answer's status line and headers, and
/// its body.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut response))
        .await
        .expect("HTTP response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

/// An HTTP reply: status, `Retry-After` if any, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as an error frame (seq 0).
    pub fn error(&self) -> ServerFrame {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    let (status, _, body) = http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    Reply { status, body }
}

/// `POST /http/ROOM` with `message`; the session token, or the refusal.
pub async fn open(addr: SocketAddr, room: &str, message: &ClientMessage) -> Result<String, Reply> {
    let reply = post(
        addr,
        &format!("/http/{room}"),
        &serde_json::to_string(message).unwrap(),
    )
    .await;
    if reply.status != 200 {
        return Err(reply);
    }
    let opened: HttpOpened = serde_json::from_str(&reply.body).expect("open reply");
    Ok(opened.session.0)
}

/// `POST /http/ROOM` with a [`join`] as `name`: the session token (a refusal panics).
pub async fn open_as(addr: SocketAddr, room: &str, name: &str) -> String {
    open(addr, room, &join(name)).await.expect("open")
}

/// A `join` for the HTTP open (the room comes from the URL).
pub fn join(name: &str) -> ClientMessage {
    ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: None,
        name: Some(name.into()),
        token: None,
    }
}

/// `POST /http/send` with these frames as one array.
pub async fn send(addr: SocketAddr, session: &str, frames: &[ClientMessage]) -> Reply {
    post(
        addr,
        &format!("/http/send?session={session}"),
        &serde_json::to_string(frames).unwrap(),
    )
    .await
}

/// `GET /http/poll` (waits up to the server's poll timeout).
pub async fn poll(addr: SocketAddr, session: &str, last_seq: u64) -> PollReply {
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(40),
        http_request(
            addr,
            "GET",
            &format!("/http/poll?session={session}&last_seq={last_seq}"),
            &[],
            "",
        ),
    )
    .await
    .expect("poll answered");
    assert_eq!(status, 200, "poll: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// One Server-Sent Event.
#[derive(Debug, PartialEq)]
pub enum Event {
    Frame {
        id: Option<u64>,
        frame: Box<ServerFrame>,
    },
    Close(u16),
}

/// An open `GET /http/events` stream. Requested as HTTP/1.0, so the body is plain bytes until
/// the server closes (no chunked coding to undo).
pub struct Sse {
    reader: BufReader<TcpStream>,
    pub status: u16,
}

impl Sse {
    pub async fn connect(addr: SocketAddr, session: &str, last_event_id: Option<u64>) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!(
            "GET /http/events?session={session} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
        );
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        tokio::time::timeout(STEP, reader.read_line(&mut status_line))
            .await
            .expect("status in time")
            .expect("read");
        let status = testkit::status_code(&status_line);
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(STEP, reader.read_line(&mut line))
                .await
                .expect("headers in time")
                .expect("read");
            if n == 0 || line == "\r\n" {
                break;
            }
        }
        Self { reader, status }
    }

    /// The next event (comments and `retry` skipped), or `None` when the stream ends or
    /// nothing comes within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        let (mut id, mut event, mut data) = (None, None::<String>, None::<String>);
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                match (event.as_deref(), data.take()) {
                    (Some("close"), Some(code)) => {
                        return Some(Event::Close(code.parse().expect("close code")));
                    }
                    (None, Some(data)) => {
                        let frame =
                            serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
                        return Some(Event::Frame {
                            id,
                            frame: Box::new(frame),
                        });
                    }
                    _ => {
                        (id, event) = (None, None);
                        continue;
                    }
                }
            }
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse().ok();
            } else if let Some(value) = line.strip_prefix("event: ") {
                event = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(value.to_owned());
            }
        }
    }

    /// The next frame; panics on anything else.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.next_within(STEP).await {
            Some(Event::Frame { id, frame }) => {
                assert_eq!(id, Some(frame.seq), "the event id is the frame's seq");
                *frame
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}
