//! `peer join`: a line chat over the reliable data channel with every peer in the room.
//!
//! Each stdin line is one message to every peer in the room: a peer whose chat channel is not
//! open (connecting, its connection being replaced, its path down) gets it once it is back.
//! Lines read while no peer is in the room are kept for the next peer that connects
//! ([`Outbox`]). When stdin closes the command leaves the room and exits, once those lines are
//! sent (the ones for a peer in the room within [`HELD_LINES_WAIT`]). Incoming text is printed
//! one message a line, escaped ([`super::escape`]); binary messages as a `* binary-message`
//! notice.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::time::Duration;

use peer::MAX_MESSAGE_BYTES;
use peer::protocol::PeerId;
use peer::{ChannelKind, ConnectionState, Peer, PeerError, PeerEvent, PeerEvents, SelectedPair};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::file_transfer::Control;
use super::outbox::{Line, MAX_HELD_LINES, Outbox, Refused};
use super::{CommonArgs, Interrupted, Output, Stop, escape};

/// How long after an ICE restart the new selected pair is waited for.
const RESELECT_WAIT: Duration = Duration::from_secs(30);
/// How often the selected pair of a restarted connection is looked at.
const RESELECT_POLL: Duration = Duration::from_millis(200);
/// How long the periodic looks at a selected pair wait for the room's answer ([`pair_now`]).
const PAIR_QUERY_WAIT: Duration = Duration::from_millis(200);
/// How often the selected pair of every other connection is looked at: it changes too when
/// the other side restarts ICE (this one only answers), or when ICE switches pairs itself.
const PAIR_WATCH: Duration = Duration::from_secs(1);
/// How long, at the end of stdin, the lines sent get to be acknowledged by their peers before
/// the room is left (closing a connection drops what its SCTP still holds).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often the lines not acknowledged yet are counted then.
const ACK_POLL: Duration = Duration::from_millis(50);
/// How long, once every line was acknowledged, what arrives is still printed before the room
/// is left: a peer whose input ended at the same moment is still sending, and once we close
/// our channels what it sends on them is dropped.
const LINGER: Duration = Duration::from_secs(1);
/// Why a `peer join` peer answers a file offer with `file-declined`.
const DECLINE_REASON: &str = "a chat peer (peer join) does not receive files: use peer recv-file";

/// A connection that restarted ICE (its relay moved, or its path failed): its `selected-pair`
/// line is printed again once ICE selected a different pair.
struct Reselect {
    before: Option<SelectedPair>,
    until: Instant,
}

/// The selected pair of `id`'s connection, if the room answers within [`PAIR_QUERY_WAIT`]. The
/// room answers between the events it hands on: with the event queue full (a chat that does
/// not keep up with a stream of lines), it waits for room there, which only this loop makes by
/// reading, so waiting for its answer without a bound would stop both.
async fn pair_now(peer: &Peer, id: &PeerId) -> Option<SelectedPair> {
    tokio::time::timeout(PAIR_QUERY_WAIT, peer.selected_pair(id))
        .await
        .ok()?
        .ok()
        .flatten()
}

/// Whether `now` is another path than `before` (addresses or relay server).
fn moved(before: Option<&SelectedPair>, now: &SelectedPair) -> bool {
    before.is_none_or(|before| {
        before.local_address != now.local_address
            || before.remote_address != now.remote_address
            || before.relay_url != now.relay_url
    })
}

/// Stdin, line by line, as bytes: a line that is not UTF-8 is still a line.
struct StdinLines {
    reader: BufReader<tokio::io::Stdin>,
    /// The line read so far (at most [`LINE_CAP`] bytes): [`Self::next`] may be cancelled (by
    /// `select!`) mid-line, and the bytes it read then stay here for the next call.
    buf: Vec<u8>,
    /// Bytes of the current line past [`LINE_CAP`]: counted, not kept.
    skipped: usize,
}

/// The most bytes of one stdin line kept: a message and its line end. A longer line is only
/// counted, so no line, however long, grows memory.
const LINE_CAP: usize = MAX_MESSAGE_BYTES + 2;

/// One line of stdin, without its `\n` or `\r\n`.
enum StdinLine {
    Bytes(Vec<u8>),
    /// Longer than [`LINE_CAP`]: only its length is known.
    TooLong(usize),
}

impl StdinLines {
    fn new() -> Self {
        Self {
            reader: BufReader::new(tokio::io::stdin()),
            buf: Vec::new(),
            skipped: 0,
        }
    }

    /// The next line; `None` at the end of stdin. Cancel-safe.
    async fn next(&mut self) -> std::io::Result<Option<StdinLine>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() && self.skipped == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take_line(false)));
            }
            let end = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..end.map_or(available.len(), |i| i + 1)];
            let keep = chunk.len().min(LINE_CAP.saturating_sub(self.buf.len()));
            self.buf.extend_from_slice(&chunk[..keep]);
            self.skipped += chunk.len() - keep;
            let used = chunk.len();
            self.reader.consume(used);
            if end.is_some() {
                return Ok(Some(self.take_line(true)));
            }
        }
    }

    /// The line read so far (`ended`: up to and with its `\n`), and a fresh one begins.
    fn take_line(&mut self, ended: bool) -> StdinLine {
        let mut line = std::mem::take(&mut self.buf);
        let skipped = std::mem::take(&mut self.skipped);
        if skipped > 0 {
            return StdinLine::TooLong(line.len() + skipped - usize::from(ended));
        }
        if ended {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        StdinLine::Bytes(line)
    }
}

/// Stdin line number `number` as a chat message, and the `warning:` to print about it: text
/// that is not UTF-8 is sent with U+FFFD in place of the invalid bytes; a line longer than
/// [`MAX_MESSAGE_BYTES`] bytes is not sent (`None`).
fn chat_message(line: Vec<u8>, number: u64) -> (Option<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let read = line.len();
    let text = String::from_utf8(line).unwrap_or_else(|err| {
        warnings.push(format!(
            "line {number} is not valid UTF-8: sent with U+FFFD in place of the invalid bytes"
        ));
        String::from_utf8_lossy(err.as_bytes()).into_owned()
    });
    if text.len() > MAX_MESSAGE_BYTES {
        warnings.clear();
        warnings.push(if text.len() == read {
            too_long(read)
        } else {
            // Each invalid byte took the 3 bytes of U+FFFD.
            format!(
                "line of {read} bytes not sent: with U+FFFD in place of its invalid UTF-8 it \
                 is {} bytes, at most {MAX_MESSAGE_BYTES} per message",
                text.len()
            )
        });
        return (None, warnings);
    }
    (Some(text), warnings)
}

/// The warning for a line of `len` bytes, too long to be sent.
fn too_long(len: usize) -> String {
    format!("line of {len} bytes not sent: at most {MAX_MESSAGE_BYTES} bytes per message")
}

/// A chat message as one text line: `NAME: TEXT`, both escaped. A name starting with `*` is
/// quoted, so that no chat line can start like a notice (`* `).
fn chat_line(name: &str, text: &str) -> String {
    let name = escape(name);
    if name.starts_with('*') {
        format!("\"{name}\": {}", escape(text))
    } else {
        format!("{name}: {}", escape(text))
    }
}

pub(crate) async fn run(
    url: &str,
    common: &CommonArgs,
    stop: &mut Stop,
) -> anyhow::Result<ExitCode> {
    let (peer, mut events) = match stop.guard(super::join(url, common)).await {
        Ok(joined) => joined?,
        Err(signal) => return stopped_by(signal),
    };
    let mut chat = Chat::new(common.output());
    let outcome = stop.guard(chat.run(&peer, &mut events)).await;
    if chat.outbox.unaddressed_len() > 0 {
        eprintln!(
            "warning: {} line(s) not sent: no peer connected",
            chat.outbox.unaddressed_len()
        );
    }
    for (id, count) in chat.outbox.waiting() {
        eprintln!(
            "warning: {count} line(s) not sent to {}: it did not connect again",
            escape(&display(&chat.names, id))
        );
    }
    let leaving = stop.leave(peer, super::Leave::Gracefully);
    let unconfirmed = if outcome.is_ok() {
        chat.print_while(leaving, &mut events).await
    } else {
        // Stopped by a signal: nothing more is printed on stdout.
        super::discarding_events(leaving, &mut events).await
    };
    let sent_lines = |id: &&PeerId| chat.peers.get(*id).is_some_and(|p| p.sent_lines);
    for id in unconfirmed.iter().filter(sent_lines) {
        eprintln!(
            "warning: {} had not confirmed reading all that was sent to it when join left \
             (its side was not closed): the last lines may not have arrived",
            escape(&display(&chat.names, id))
        );
    }
    match outcome {
        Ok(result) => result,
        Err(signal) => stopped_by(signal),
    }
}

/// How `peer join` ends on a signal: Ctrl-C is how a chat ends (status 0); SIGTERM is 143.
fn stopped_by(signal: Interrupted) -> anyhow::Result<ExitCode> {
    match signal {
        Interrupted::Int => Ok(ExitCode::SUCCESS),
        Interrupted::Term => Err(signal.into()),
    }
}

/// How long the lines held for peers in the room get to go once stdin ended (a peer whose
/// connection is being replaced, or whose path is down for a moment).
const HELD_LINES_WAIT: Duration = Duration::from_secs(30);

/// How many peers that left keep their names: what they sent before leaving is still printed
/// after `peer-left` (up to their channels' closes), under the name, not the id.
const DEPARTED_NAMES: usize = 64;

/// The state of one `peer join` session.
struct Chat {
    out: Output,
    /// The names of the peers in the room and of the last [`DEPARTED_NAMES`] that left.
    names: HashMap<PeerId, String>,
    /// The peers that left whose names are kept, oldest first.
    departed: VecDeque<PeerId>,
    /// What the chat keeps about each peer: those in the room, those that left whose names
    /// are kept (a file they offered stays declined while its last chunks arrive), and peers
    /// heard of first from the channel they opened (their `peer-joined` still queued).
    peers: HashMap<PeerId, PeerChat>,
    /// Lines no peer could take yet.
    outbox: Outbox,
}

/// What the chat keeps about one peer: reset but for `declined` when it leaves (forgotten with
/// its name, [`DEPARTED_NAMES`] departures later), carried over to its new id when it re-joins
/// with its connection (`peer-renamed`).
#[derive(Default)]
struct PeerChat {
    /// It is in the room (`peer-joined` seen, no `peer-left` since): lines are held for it
    /// while its channel is not open.
    present: bool,
    /// Its connection is down (disconnected or failed) though its channel is still
    /// registered: a line sent there would sit in a buffer that may never drain.
    down: bool,
    /// It is sending a file we declined: its binary chunks are dropped, not shown.
    declined: bool,
    /// A line went to it: when we leave, only such a peer can have missed one.
    sent_lines: bool,
    /// How many replies (`file-declined`) went to it after the last line sent to it: the last
    /// messages it may not have acknowledged when it leaves, they are no lines.
    replies_since_line: usize,
    /// The pair last printed (when a reliable channel of it opened, or since: the pair
    /// changed): both sides may open one (the browser's `chat` and our `reliable`), and the
    /// second adds no line unless the path is another (a connection that replaced the first).
    opened_on: Option<SelectedPair>,
    /// Its connection restarted ICE: the new pair is printed once ICE selected another.
    reselect: Option<Reselect>,
}

impl Chat {
    fn new(out: Output) -> Self {
        Self {
            out,
            names: HashMap::new(),
            departed: VecDeque::new(),
            peers: HashMap::new(),
            outbox: Outbox::default(),
        }
    }

    /// Runs until stdin ends (and what it had is sent) or the server ends the session.
    async fn run(&mut self, peer: &Peer, events: &mut PeerEvents) -> anyhow::Result<ExitCode> {
        let mut stdin = StdinLines::new();
        let mut stdin_open = true;
        let mut line_number = 0u64;
        let mut poll = tokio::time::interval(RESELECT_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(PAIR_WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Once stdin ended: until when the lines held for peers in the room may wait.
        let mut held_until = None;
        loop {
            tokio::select! {
                // Stdin is read while fewer than MAX_HELD_LINES wait for no peer and for each
                // peer: then it is left unread (a pipe into us blocks) until they can go.
                line = stdin.next(), if stdin_open && self.outbox.has_room() => match line {
                    Ok(Some(line)) => {
                        line_number += 1;
                        let (text, warnings) = match line {
                            StdinLine::Bytes(line) => chat_message(line, line_number),
                            StdinLine::TooLong(len) => (None, vec![too_long(len)]),
                        };
                        for warning in warnings {
                            eprintln!("warning: {warning}");
                        }
                        if let Some(text) = text {
                            self.send_line(peer, text).await;
                        }
                    }
                    Ok(None) | Err(_) => {
                        // An I/O error ends stdin like its end, with a word.
                        if let Err(err) = line {
                            eprintln!("warning: cannot read stdin: {err}");
                        }
                        stdin_open = false;
                        if self.outbox.is_empty() {
                            break;
                        }
                        held_until = Some(Instant::now() + HELD_LINES_WAIT);
                    }
                },
                event = events.recv() => {
                    let Some(event) = event else { break };
                    if !self.on_event(peer, event).await {
                        // The server ended the session (`* signaling-closed`): a failure.
                        return Ok(ExitCode::FAILURE);
                    }
                    if !stdin_open && self.outbox.is_empty() {
                        // Stdin ended while lines were held: they are sent now.
                        break;
                    }
                }
                () = tokio::time::sleep_until(held_until.unwrap_or_else(Instant::now)),
                    if held_until.is_some() && self.outbox.unaddressed_len() == 0 => break,
                _ = poll.tick(), if self.peers.values().any(|p| p.reselect.is_some()) => {
                    self.report_reselected(peer).await;
                }
                _ = watch.tick() => self.report_moved(peer).await,
            }
        }
        if !stdin_open {
            if !self.wait_acknowledged(peer, events).await {
                return Ok(ExitCode::FAILURE);
            }
            self.out
                .notice("left", &[("room", peer.room().to_string())]);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// At the end of stdin: until every line sent is acknowledged by its peer's SCTP,
    /// [`ACK_WAIT`] at most, events are handled (a chat line that arrives is printed); then
    /// the lines not acknowledged are named. `false` when the server ended the session.
    async fn wait_acknowledged(&mut self, peer: &Peer, events: &mut PeerEvents) -> bool {
        let deadline = Instant::now() + ACK_WAIT;
        let mut poll = tokio::time::interval(ACK_POLL);
        let mut acknowledged_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if let Some(at) = acknowledged_at {
                        if at.elapsed() >= LINGER {
                            return true;
                        }
                        continue;
                    }
                    let mut waiting = peer.unacknowledged().await;
                    waiting.retain(|(_, count)| *count > 0);
                    if waiting.is_empty() {
                        // Acknowledged is not read yet: leaving waits for that
                        // (`Peer::close`).
                        acknowledged_at = Some(Instant::now());
                        continue;
                    }
                    if Instant::now() >= deadline {
                        for (id, count) in waiting {
                            eprintln!(
                                "warning: {count} line(s) to {} may not have arrived: not acknowledged when join ended",
                                escape(&display(&self.names, &id))
                            );
                        }
                        return true;
                    }
                }
                event = events.recv() => match event {
                    Some(event) => {
                        if !self.on_event(peer, event).await {
                            return false;
                        }
                    }
                    None => return true,
                },
            }
        }
    }

    /// Peers a line goes to: an open chat channel and a connection that is not down.
    fn live_peers(&self, peer: &Peer) -> Vec<PeerId> {
        peer.connected_peers(ChannelKind::Reliable)
            .into_iter()
            .filter(|id| !self.peers.get(id).is_some_and(|p| p.down))
            .collect()
    }

    /// Sends a stdin line to every live peer and holds it for the other peers in the room;
    /// with no peer in the room, holds it for the next one that connects.
    async fn send_line(&mut self, peer: &Peer, line: String) {
        let line = Line::from(line);
        let live = self.live_peers(peer);
        if live.is_empty() && !self.peers.values().any(|p| p.present) {
            if self.outbox.hold_unaddressed(line) == Ok(true) {
                eprintln!(
                    "warning: no peer connected: lines are kept for the next peer that connects"
                );
            }
            return;
        }
        for id in &live {
            // Lines held for it go first: its channel may have opened before we heard of it.
            if self.flush_held(peer, id).await {
                self.deliver(peer, id, line.clone()).await;
            } else {
                self.hold(id, line.clone());
            }
        }
        let absent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(id, p)| p.present && !live.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &absent {
            self.hold(id, line.clone());
        }
    }

    /// Holds `line` for `id`, a peer in the room whose chat channel is not open.
    fn hold(&mut self, id: &PeerId, line: Line) {
        let shown = display(&self.names, id);
        let name = escape(&shown);
        match self.outbox.hold_for(id, line) {
            Ok(true) => {
                eprintln!("warning: {name} is not connected: lines are kept for it until it is")
            }
            Ok(false) => {}
            Err(Refused::Full) => {
                eprintln!("warning: not sent to {name}: {MAX_HELD_LINES} lines already wait for it")
            }
        }
    }

    /// Sends `line` to `to`; `false` if its channel closed meanwhile (its connection is being
    /// replaced), and the line is held for it.
    async fn deliver(&mut self, peer: &Peer, to: &PeerId, line: Line) -> bool {
        match peer.send_text(to, ChannelKind::Reliable, &line).await {
            Ok(()) => {
                self.outbox.reached(to);
                let state = self.peers.entry(to.clone()).or_default();
                state.replies_since_line = 0;
                state.sent_lines = true;
                true
            }
            Err(PeerError::ChannelNotOpen { .. } | PeerError::Replaced)
                if self.peers.get(to).is_some_and(|p| p.present) =>
            {
                self.hold(to, line);
                false
            }
            Err(err) => {
                eprintln!(
                    "warning: not sent to {}: {err}",
                    escape(&display(&self.names, to))
                );
                true
            }
        }
    }

    /// Sends the lines held for `to`, which can take them now, in order; `false` if its
    /// channel closed meanwhile, and what was not sent is held again.
    async fn flush_held(&mut self, peer: &Peer, to: &PeerId) -> bool {
        let mut lines = self.outbox.take_for(to).into_iter();
        while let Some(line) = lines.next() {
            if !self.deliver(peer, to, line).await {
                for line in lines {
                    self.hold(to, line);
                }
                return false;
            }
        }
        true
    }

    /// While `leaving` runs ([`Peer::close`]), and then for what is still queued: what had
    /// arrived is printed (and what a peer that leaves too sends up to its close), and the
    /// peers' leaving; a file offered then is not answered.
    async fn print_while<T>(
        &mut self,
        leaving: impl Future<Output = T>,
        events: &mut PeerEvents,
    ) -> T {
        tokio::pin!(leaving);
        let left = loop {
            tokio::select! {
                left = &mut leaving => break left,
                Some(event) = events.recv() => self.on_event_leaving(event).await,
            }
        };
        while let Some(event) = events.try_recv() {
            self.on_event_leaving(event).await;
        }
        left
    }

    /// An event while leaving: a message is printed, a notice too.
    async fn on_event_leaving(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Message {
                from,
                kind,
                text,
                data,
            } => self.on_message(None, from, kind, text, &data).await,
            event => {
                if let Some(event) = self.on_notice(event) {
                    self.announce(&event);
                }
            }
        }
    }

    /// Prints the notice of an event [`Self::on_notice`] hands back (what else it asks for
    /// is done by [`Self::on_event`], in the room only).
    fn announce(&self, event: &PeerEvent) {
        let out = self.out;
        match event {
            PeerEvent::ChannelOpen { peer: id, kind } => {
                out.peer_notice("channel-open", id, "kind", kind)
            }
            PeerEvent::ConnectionState { peer: id, state } => {
                let state_name = format!("{state:?}").to_lowercase();
                out.peer_notice("connection-state", id, "state", state_name);
            }
            PeerEvent::IceRestart { peer: id, reason } => {
                out.peer_notice("ice-restart", id, "reason", reason)
            }
            PeerEvent::SignalingClosed { message, .. } => {
                out.notice("signaling-closed", &[("reason", message.clone())])
            }
            _ => {}
        }
    }

    /// Handles one event; `false` when the session is over.
    async fn on_event(&mut self, peer: &Peer, event: PeerEvent) -> bool {
        let Some(event) = self.on_notice(event) else {
            return true;
        };
        self.announce(&event);
        let out = self.out;
        match event {
            PeerEvent::ChannelOpen {
                peer: id,
                kind: ChannelKind::Reliable,
            } => {
                if !self.peers.get(&id).is_some_and(|p| p.down) {
                    self.flush_held(peer, &id).await;
                }
                if let Some(pair) = super::selected_pair_eventually(peer, &id).await
                    && let state = self.peers.entry(id.clone()).or_default()
                    && moved(state.opened_on.as_ref(), &pair)
                {
                    out.selected_pair(id.as_str(), &pair, None);
                    state.opened_on = Some(pair);
                    // Shown: an ICE restart that waited for a new pair needs no line more.
                    state.reselect = None;
                }
            }
            PeerEvent::Message {
                from,
                kind,
                text,
                data,
            } => self.on_message(Some(peer), from, kind, text, &data).await,
            PeerEvent::ConnectionState { peer: id, state } => {
                self.on_connection_state(peer, id, state).await;
            }
            PeerEvent::IceRestart {
                peer: id,
                reason: _,
            } => {
                // Report the new pair once ICE has moved off the one before the (first of a
                // series of) restarts: a moved relay, or a path that failed and came back.
                let until = Instant::now() + RESELECT_WAIT;
                let Some(state) = self.peers.get(&id) else {
                    return true;
                };
                let before = match &state.reselect {
                    Some(waiting) => waiting.before.clone(),
                    None => pair_now(peer, &id).await,
                };
                if let Some(state) = self.peers.get_mut(&id) {
                    state.reselect = Some(Reselect { before, until });
                }
            }
            PeerEvent::SignalingClosed { .. } => return false,
            _ => {}
        }
        true
    }

    /// Handles an event that needs no more than printing and the session's own state (while
    /// in the room and while leaving it alike); hands back any other.
    fn on_notice(&mut self, event: PeerEvent) -> Option<PeerEvent> {
        let out = self.out;
        match event {
            PeerEvent::PeerJoined { peer: id, name } => {
                // Back (a peer given up as gone that was not): its name is its own again.
                self.departed.retain(|gone| *gone != id);
                self.peers.entry(id.clone()).or_default().present = true;
                if let Some(name) = &name {
                    self.names.insert(id.clone(), name.clone());
                }
                out.notice(
                    "peer-joined",
                    &[("id", id.to_string()), ("name", name.unwrap_or_default())],
                );
            }
            PeerEvent::PeerLeft { peer: id, reason } => {
                out.notice(
                    "peer-left",
                    &[
                        ("id", id.to_string()),
                        ("name", display(&self.names, &id)),
                        ("reason", format!("{reason:?}").to_lowercase()),
                    ],
                );
                let held = self.outbox.forget(&id);
                if held > 0 {
                    eprintln!(
                        "warning: {held} line(s) not sent to {}: it left the room",
                        escape(&display(&self.names, &id))
                    );
                }
                if let Some(state) = self.peers.get_mut(&id) {
                    // What it sends until its channels close is still shown, a file it offered
                    // still declined.
                    *state = PeerChat {
                        declined: state.declined,
                        ..PeerChat::default()
                    };
                }
                self.departed.push_back(id.clone());
                if self.departed.len() > DEPARTED_NAMES
                    && let Some(oldest) = self.departed.pop_front()
                {
                    self.names.remove(&oldest);
                    self.peers.remove(&oldest);
                }
            }
            PeerEvent::PeerRenamed { old, new } => {
                if let Some(state) = self.peers.remove(&old) {
                    self.peers.insert(new.clone(), state);
                }
                self.outbox.rename(&old, &new);
                if let Some(name) = self.names.remove(&old) {
                    self.names.insert(new.clone(), name);
                }
                out.notice(
                    "peer-renamed",
                    &[("old", old.to_string()), ("new", new.to_string())],
                );
            }
            PeerEvent::ChannelClosed { peer: id, kind } => {
                out.peer_notice("channel-closed", &id, "kind", kind);
            }
            PeerEvent::ConnectionReplaced { peer: id, reason } => {
                out.peer_notice("connection-replaced", &id, "reason", reason);
            }
            PeerEvent::Resent { peer: id, messages } => out.notice_values(
                "resent",
                &[("peer", id.as_str().into()), ("messages", messages.into())],
            ),
            PeerEvent::Unacknowledged { peer: id, messages } => {
                // The last messages sent are the ones not acknowledged.
                let replies = self.peers.get(&id).map_or(0, |p| p.replies_since_line);
                let lines = messages.saturating_sub(replies);
                if lines > 0 {
                    eprintln!(
                        "warning: {lines} line(s) to {} may not have arrived: it left the room before acknowledging them",
                        escape(&display(&self.names, &id))
                    );
                }
            }
            PeerEvent::SignalingReconnecting { attempt, delay } => out.notice_values(
                "signaling-reconnecting",
                &[
                    ("attempt", attempt.into()),
                    (
                        "delay_ms",
                        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).into(),
                    ),
                ],
            ),
            PeerEvent::SignalingResumed { replayed, resent } => {
                let fields = [("replayed", replayed.into()), ("resent", resent.into())];
                out.notice_values("signaling-resumed", &fields);
            }
            PeerEvent::SignalingRejoined { peer_id, reason } => {
                let fields = [("id", peer_id.to_string()), ("reason", reason.to_string())];
                out.notice("signaling-rejoined", &fields);
            }
            PeerEvent::IceServersUpdated => out.notice("ice-servers-updated", &[]),
            PeerEvent::Broadcast { from, data } => {
                out.notice(
                    "broadcast",
                    &[("from", from.to_string()), ("data", data.to_string())],
                );
            }
            PeerEvent::TurnUnusable { peer, url, reason } => {
                eprintln!(
                    "warning: peer {peer}: connection failed; TURN {url}: {}",
                    escape(&reason)
                );
            }
            PeerEvent::Error { peer: id, message } => {
                let about = id.map(|id| format!("peer {id}: ")).unwrap_or_default();
                eprintln!("warning: {about}{}", escape(&message));
            }
            event => return Some(event),
        }
        None
    }

    /// Prints the `selected-pair` line of every restarted connection whose pair changed; the
    /// pair shown is the one a reliable channel that opens next compares with.
    async fn report_reselected(&mut self, peer: &Peer) {
        let now = Instant::now();
        let waiting: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.reselect.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            let pair = pair_now(peer, &id).await;
            let Some(state) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(entry) = &state.reselect else {
                continue;
            };
            match pair {
                Some(pair) if moved(entry.before.as_ref(), &pair) => {
                    self.out.selected_pair(id.as_str(), &pair, None);
                    state.reselect = None;
                    state.opened_on = Some(pair);
                }
                _ if now >= entry.until => state.reselect = None,
                _ => {}
            }
        }
    }

    /// Prints the `selected-pair` line of every connection not waiting for a restart of its
    /// own ([`Self::report_reselected`]) whose pair is another than the one printed last.
    async fn report_moved(&mut self, peer: &Peer) {
        let shown: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.opened_on.is_some() && p.reselect.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in shown {
            let Some(pair) = pair_now(peer, &id).await else {
                continue;
            };
            if let Some(state) = self.peers.get_mut(&id)
                && state.reselect.is_none()
                && moved(state.opened_on.as_ref(), &pair)
            {
                self.out.selected_pair(id.as_str(), &pair, None);
                state.opened_on = Some(pair);
            }
        }
    }

    /// Tracks whether a connection is down; the kept lines go to one that comes back.
    async fn on_connection_state(&mut self, peer: &Peer, id: PeerId, state: ConnectionState) {
        match state {
            ConnectionState::Connected => {
                let Some(state) = self.peers.get_mut(&id) else {
                    return;
                };
                let was_down = std::mem::take(&mut state.down);
                let open = peer.connected_peers(ChannelKind::Reliable).contains(&id);
                if was_down && open {
                    self.flush_held(peer, &id).await;
                }
            }
            ConnectionState::Disconnected | ConnectionState::Failed | ConnectionState::Closed => {
                if let Some(state) = self.peers.get_mut(&id) {
                    state.down = true;
                }
            }
            ConnectionState::New | ConnectionState::Connecting => {}
        }
    }

    /// Prints a chat message; declines a file offer (unless leaving: no `peer`); notes a
    /// binary message by its size.
    async fn on_message(
        &mut self,
        peer: Option<&Peer>,
        from: PeerId,
        kind: ChannelKind,
        text: bool,
        data: &[u8],
    ) {
        let out = self.out;
        let Some(chat) = chat_text(kind, data) else {
            tracing::debug!(%from, %kind, bytes = data.len(), "non-chat message not shown");
            return;
        };
        let name = display(&self.names, &from);
        if !text {
            // File chunks of an offer declined already are not news.
            if !self.peers.get(&from).is_some_and(|p| p.declined) {
                out.notice_values(
                    "binary-message",
                    &[
                        ("from", from.as_str().into()),
                        ("name", name.into()),
                        ("bytes", data.len().into()),
                    ],
                );
            }
            return;
        }
        match serde_json::from_slice::<Control>(data) {
            Ok(Control::Header {
                name: file, size, ..
            }) => {
                out.notice_values(
                    "file-declined",
                    &[
                        ("from", from.as_str().into()),
                        ("name", name.into()),
                        ("file", file.into()),
                        ("bytes", size.into()),
                    ],
                );
                self.peers.entry(from.clone()).or_default().declined = true;
                let reply = Control::Declined {
                    reason: DECLINE_REASON.into(),
                };
                if let (Some(peer), Ok(reply)) = (peer, serde_json::to_string(&reply))
                    && peer
                        .send_text(&from, ChannelKind::Reliable, &reply)
                        .await
                        .is_ok()
                    && let Some(state) = self.peers.get_mut(&from)
                {
                    state.replies_since_line += 1;
                }
                return;
            }
            Ok(Control::End)
                if self
                    .peers
                    .get_mut(&from)
                    .is_some_and(|p| std::mem::take(&mut p.declined)) =>
            {
                return;
            }
            _ => {}
        }
        if out.json {
            super::print_line(
                &serde_json::json!({"event": "message", "from": from.as_str(), "name": name, "text": chat})
                    .to_string(),
            );
        } else {
            super::print_line(&chat_line(&name, &chat));
        }
    }
}

/// The chat text of a message, if it is one. Chat is the reliable channel, labelled `reliable`
/// by this SDK and `chat` by the browser demo; the demo's other channels (`canvas`, `cursor`)
/// carry JSON drawing state, which is not chat (`channel::classify`).
fn chat_text(kind: ChannelKind, data: &[u8]) -> Option<Cow<'_, str>> {
    (kind == ChannelKind::Reliable).then(|| String::from_utf8_lossy(data))
}

fn display(names: &HashMap<PeerId, String>, peer: &PeerId) -> String {
    names.get(peer).cloned().unwrap_or_else(|| peer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pair_is_reported_after_a_relay_move() {
        let pair = |local: &str, relay: Option<&str>| SelectedPair {
            local_type: "relay".into(),
            remote_type: "relay".into(),
            local_address: local.into(),
            remote_address: "127.0.0.1:40001".into(),
            protocol: "udp".into(),
            rtt: None,
            relay_url: relay.map(Into::into),
        };
        let old = pair("127.0.0.1:40000", Some("turn:127.0.0.1:3478?transport=udp"));
        assert!(!moved(Some(&old), &old.clone()));
        assert!(moved(Some(&old), &pair("127.0.0.1:40002", None)));
        assert!(moved(
            Some(&old),
            &pair("127.0.0.1:40000", Some("turn:127.0.0.1:3479?transport=udp"))
        ));
        assert!(moved(None, &old));
    }

    #[test]
    fn a_chat_message_is_one_line_that_cannot_pass_for_a_notice() {
        let line = chat_line(
            "mallory",
            "line one\n* peer-left id=deadbeef name=bob reason=left\x1b]0;pwned\x07\r",
        );
        assert_eq!(
            line,
            "mallory: line one\\n* peer-left id=deadbeef name=bob reason=left\\x1b]0;pwned\\x07\\r"
        );
        // A display name starting like a notice is quoted (the server refuses control
        // characters in names; they are escaped anyway).
        assert_eq!(
            chat_line("* peer-left id=1 reason=left", "x"),
            "\"* peer-left id=1 reason=left\": x"
        );
        assert_eq!(chat_line("bo\x1bb", "hi"), "bo\\x1bb: hi");
        assert_eq!(chat_line("ada", "plain text"), "ada: plain text");
    }

    #[test]
    fn a_line_that_is_not_utf8_is_sent_lossily_with_a_warning() {
        let (text, warnings) = chat_message(b"caf\xc3\xa9 \xff bad".to_vec(), 2);
        assert_eq!(text.as_deref(), Some("café \u{fffd} bad"));
        assert_eq!(
            warnings,
            ["line 2 is not valid UTF-8: sent with U+FFFD in place of the invalid bytes"]
        );
        let (text, warnings) = chat_message(b"good".to_vec(), 1);
        assert_eq!((text.as_deref(), warnings.len()), (Some("good"), 0));
    }

    #[test]
    fn a_line_longer_than_a_message_is_not_sent_and_says_so() {
        let (text, warnings) = chat_message(vec![b'x'; MAX_MESSAGE_BYTES], 1);
        assert_eq!(text.map(|t| t.len()), Some(MAX_MESSAGE_BYTES));
        assert!(warnings.is_empty());
        let (text, warnings) = chat_message(vec![b'x'; MAX_MESSAGE_BYTES + 1], 1);
        assert_eq!(text, None);
        assert_eq!(
            warnings,
            ["line of 65537 bytes not sent: at most 65536 bytes per message"]
        );
        // A line that fits, made longer by U+FFFD, says both sizes.
        let mut line = vec![b'x'; MAX_MESSAGE_BYTES - 1];
        line.push(0xff);
        let (text, warnings) = chat_message(line, 3);
        assert_eq!(text, None);
        assert_eq!(
            warnings,
            [
                "line of 65536 bytes not sent: with U+FFFD in place of its invalid UTF-8 it is \
                 65538 bytes, at most 65536 per message"
            ]
        );
    }

    #[test]
    fn only_the_reliable_channel_is_chat() {
        assert_eq!(
            chat_text(ChannelKind::Reliable, b"hello").as_deref(),
            Some("hello")
        );
        let stroke = br#"{"type":"stroke","points":[[1,2]]}"#;
        assert_eq!(chat_text(ChannelKind::Unreliable, stroke), None);
    }
}
