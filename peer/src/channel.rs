//! Data channels: the two kinds each pair of peers opens, the registry of open channels that
//! `Peer::send` writes to, and the reader task that turns a channel's events into
//! [`PeerEvent`]s.
//!
//! The peer that joined the room later (the polite side) creates both channels in-band:
//! `reliable` (ordered, reliable) and `unreliable` (unordered, no retransmissions). The other
//! side accepts whatever channels arrive and classifies them (`classify`): by label when it
//! is one of ours or of the README's (`chat`, `canvas`, `cursor`), else by its `ordered` flag,
//! so a browser that opens channels of its own is understood too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use bytes::BytesMut;
use signaling::protocol::PeerId;
use tokio::sync::mpsc;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};

use crate::PeerEvent;
use crate::error::{PeerError, Result};
use crate::sent_log::{Outgoing, SentLog};

/// How often an open reliable channel's sent log forgets what SCTP acknowledged, while it
/// holds any message: a channel the peer closes counts as not acknowledged what was not this
/// long before (its acknowledgements are not known after the close).
const SENT_LOG_REFRESH: Duration = Duration::from_millis(100);

/// Label of the reliable, ordered channel.
pub const RELIABLE_LABEL: &str = "reliable";
/// Label of the unreliable, unordered channel.
pub const UNRELIABLE_LABEL: &str = "unreliable";

/// The two kinds of data channel between each pair of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// Ordered and reliable (SCTP retransmits until delivered).
    Reliable,
    /// Unordered, no retransmissions: for state updates where the latest one wins.
    Unreliable,
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reliable => RELIABLE_LABEL,
            Self::Unreliable => UNRELIABLE_LABEL,
        })
    }
}

impl ChannelKind {
    /// The label and options to create this kind of channel with.
    pub(crate) fn init(self) -> (&'static str, RTCDataChannelInit) {
        match self {
            Self::Reliable => (
                RELIABLE_LABEL,
                RTCDataChannelInit {
                    ordered: true,
                    ..Default::default()
                },
            ),
            Self::Unreliable => (
                UNRELIABLE_LABEL,
                RTCDataChannelInit {
                    ordered: false,
                    max_retransmits: Some(0),
                    ..Default::default()
                },
            ),
        }
    }
}

/// The kind of a channel the remote opened (`label`, `ordered`), and whether it is the one to
/// send that kind on: `chat` and our `reliable` are chat, `cursor` and our `unreliable` are
/// unordered state updates. `canvas` is JSON drawing state, never chat, ordered or not (the
/// README's web client opens it unordered; another client may not); an unknown label goes by
/// its `ordered` flag. The one sent on is the first open channel of its kind whose label names
/// the kind, else the first open one of the kind ([`send_index`]).
pub(crate) fn classify(label: &str, ordered: bool) -> (ChannelKind, bool) {
    match label {
        "chat" | RELIABLE_LABEL => (ChannelKind::Reliable, true),
        "cursor" | UNRELIABLE_LABEL => (ChannelKind::Unreliable, true),
        "canvas" => (ChannelKind::Unreliable, false),
        _ if ordered => (ChannelKind::Reliable, false),
        _ => (ChannelKind::Unreliable, false),
    }
}

/// The remote peer id a connection currently answers to. Shared by the connection and its
/// channel readers so that a re-keyed connection (after a signaling re-join) reports the new id.
pub(crate) type RemoteId = Arc<RwLock<PeerId>>;

pub(crate) fn read_remote(id: &RemoteId) -> PeerId {
    match id.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The open channels of every remote peer, keyed by the connection's stable key.
#[derive(Default)]
pub(crate) struct ChannelRegistry {
    inner: RwLock<Channels>,
}

#[derive(Default)]
struct Channels {
    open: HashMap<u64, PeerChannels>,
    /// Connections being replaced ([`ChannelRegistry::take_unacknowledged`]) until they end
    /// ([`ChannelRegistry::remove_connection`]): a channel of theirs that opens late is not
    /// sent on.
    retired: HashSet<u64>,
    /// Per connection, the reliable messages of its channels that closed (the peer closed
    /// them) without SCTP being known to have acknowledged them, for
    /// [`ChannelRegistry::take_unacknowledged`], until the connection is retired or ends.
    closed_unacknowledged: HashMap<u64, ClosedUnacknowledged>,
}

/// The most bytes of messages kept per connection from channels that closed unacknowledged
/// (four send buffers at the default limit): a peer that keeps closing the channel sent on
/// cannot make them grow without bound. Older ones are counted, not kept.
const CLOSED_UNACKNOWLEDGED_LIMIT: usize = 4 << 20;

/// The messages of a connection's channels that closed without SCTP being known to have
/// acknowledged them: the newest [`CLOSED_UNACKNOWLEDGED_LIMIT`] bytes, and how many older
/// ones were let go.
#[derive(Default)]
struct ClosedUnacknowledged {
    messages: VecDeque<Outgoing>,
    bytes: usize,
    dropped: usize,
}

impl ClosedUnacknowledged {
    fn extend(&mut self, closed: Vec<Outgoing>) {
        for message in closed {
            self.bytes += message.data.len();
            self.messages.push_back(message);
        }
        while self.bytes > CLOSED_UNACKNOWLEDGED_LIMIT {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= oldest.data.len();
            self.dropped += 1;
        }
    }
}

/// The reliable messages of a connection that SCTP has not acknowledged
/// ([`ChannelRegistry::take_unacknowledged`]).
#[derive(Default)]
pub(crate) struct Unacknowledged {
    /// Those kept, to send again on a connection that replaces it.
    pub(crate) messages: Vec<Outgoing>,
    /// Those of channels that closed beyond [`CLOSED_UNACKNOWLEDGED_LIMIT`]: counted only.
    pub(crate) dropped: usize,
}

impl Unacknowledged {
    /// How many there are.
    pub(crate) fn count(&self) -> usize {
        self.messages.len() + self.dropped
    }
}

struct PeerChannels {
    remote: RemoteId,
    /// Every open channel of each kind, in the order they opened: when the one sent on closes,
    /// another open one of its kind takes over.
    reliable: Vec<SendChannel>,
    unreliable: Vec<SendChannel>,
}

/// An open channel, and whether its label names its kind (see [`classify`]).
struct SendChannel {
    sender: ChannelSender,
    named: bool,
}

/// The reliable messages a replaced connection had not had acknowledged, for its successor's
/// first reliable channel to send before any other ([`spawn_reader`]).
pub(crate) type CarriedOver = Arc<tokio::sync::Mutex<Vec<Outgoing>>>;

/// Where `Peer::send` writes: a channel, and the log of its unacknowledged messages if it is
/// reliable.
#[derive(Clone)]
pub(crate) struct ChannelSender {
    dc: Arc<dyn DataChannel>,
    sent: Option<Arc<Mutex<SentLog>>>,
}

impl ChannelSender {
    fn new(dc: Arc<dyn DataChannel>, kind: ChannelKind) -> Self {
        let sent = (kind == ChannelKind::Reliable).then(Arc::default);
        Self { dc, sent }
    }

    /// Sends one message (binary or text).
    pub(crate) async fn send(&self, message: Outgoing) -> Result<(), PeerError> {
        if message.text {
            let text = std::str::from_utf8(&message.data)
                .map_err(|_| PeerError::Protocol("text message is not UTF-8".into()))?;
            self.dc.send_text(text).await?;
        } else {
            self.dc.send(BytesMut::from(&message.data[..])).await?;
        }
        if let Some(sent) = &self.sent {
            let outstanding = self.dc.outstanding_bytes().await.ok();
            let logged = sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(message, outstanding);
            if !logged {
                return Err(PeerError::Replaced);
            }
        }
        Ok(())
    }

    /// How many messages sent here SCTP has not acknowledged yet (none if that is not known);
    /// the log forgets the others.
    async fn unacknowledged(&self) -> usize {
        let Some(sent) = &self.sent else {
            return 0;
        };
        let before = lock_log(sent).recorded();
        let Ok(outstanding) = self.dc.outstanding_bytes().await else {
            return 0;
        };
        let mut sent = lock_log(sent);
        let outstanding = sent.trim_since(outstanding, before);
        sent.unacknowledged(outstanding).len()
    }

    /// The log forgets the messages SCTP acknowledged meanwhile, while the channel is open:
    /// once it closed, what the log holds is taken as not acknowledged
    /// ([`ChannelRegistry::remove`]).
    async fn refresh(&self) {
        let Some(sent) = &self.sent else {
            return;
        };
        let before = {
            let log = lock_log(sent);
            if log.is_empty() {
                return;
            }
            log.recorded()
        };
        if let Ok(outstanding) = self.dc.outstanding_bytes().await {
            lock_log(sent).trim_since(outstanding, before);
        }
    }

    /// The messages of a channel that closed, whose acknowledgement is no longer known: all
    /// that the log holds (as of its last refresh), once.
    fn take_closed(&self) -> Vec<Outgoing> {
        self.sent
            .as_ref()
            .map_or_else(Vec::new, |sent| lock_log(sent).take(usize::MAX))
    }

    /// The messages sent here that SCTP has not acknowledged (none if that is not known),
    /// once: what is sent here after is an error ([`PeerError::Replaced`]).
    async fn take_unacknowledged(&self) -> Vec<Outgoing> {
        let Some(sent) = &self.sent else {
            return Vec::new();
        };
        let outstanding = self.dc.outstanding_bytes().await.unwrap_or(0);
        lock_log(sent).take(outstanding)
    }
}

/// A channel's sent log, locked (never held across an await).
fn lock_log(sent: &Mutex<SentLog>) -> MutexGuard<'_, SentLog> {
    sent.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which of the open channels of a kind (`named`: whether each one's label names the kind, in
/// the order they opened) `Peer::send` writes to: the first named one, else the first.
fn send_index(named: impl IntoIterator<Item = bool>) -> Option<usize> {
    let mut first = None;
    for (index, named) in named.into_iter().enumerate() {
        if named {
            return Some(index);
        }
        first.get_or_insert(index);
    }
    first
}

impl ChannelRegistry {
    fn with_write<R>(&self, f: impl FnOnce(&mut Channels) -> R) -> R {
        match self.inner.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn with_read<R>(&self, f: impl FnOnce(&HashMap<u64, PeerChannels>) -> R) -> R {
        match self.inner.read() {
            Ok(guard) => f(&guard.open),
            Err(poisoned) => f(&poisoned.into_inner().open),
        }
    }

    /// `dc` opened. It is sent on if it is the first of its kind, or the first whose label
    /// names the kind (`named`); otherwise the one sent on stays, so that the messages of a
    /// file or a chat keep to one channel, in order, while it is open.
    fn insert(
        &self,
        key: u64,
        remote: &RemoteId,
        kind: ChannelKind,
        sender: ChannelSender,
        named: bool,
    ) {
        self.with_write(|channels| {
            if channels.retired.contains(&key) {
                return;
            }
            let entry = channels.open.entry(key).or_insert_with(|| PeerChannels {
                remote: remote.clone(),
                reliable: Vec::new(),
                unreliable: Vec::new(),
            });
            entry.of_kind(kind).push(SendChannel { sender, named });
        });
    }

    /// Channel `id` closed: if it was sent on, the next by [`send_index`] takes over. What its
    /// log still holds (a reliable one's) is kept as not acknowledged, for the connection's
    /// [`Self::take_unacknowledged`].
    fn remove(&self, key: u64, kind: ChannelKind, id: usize) {
        self.with_write(|channels| {
            let Some(entry) = channels.open.get_mut(&key) else {
                return;
            };
            let of_kind = entry.of_kind(kind);
            if let Some(index) = of_kind.iter().position(|open| open.sender.dc.id() == id) {
                let closed = of_kind.remove(index).sender.take_closed();
                if !closed.is_empty() {
                    channels
                        .closed_unacknowledged
                        .entry(key)
                        .or_default()
                        .extend(closed);
                }
            }
            if entry.reliable.is_empty() && entry.unreliable.is_empty() {
                channels.open.remove(&key);
            }
        });
    }

    /// Forgets every channel of a connection (it closed).
    pub(crate) fn remove_connection(&self, key: u64) {
        self.with_write(|channels| {
            channels.open.remove(&key);
            channels.retired.remove(&key);
            channels.closed_unacknowledged.remove(&key);
        });
    }

    /// Forgets every channel of a connection that is being replaced or closed, so that
    /// nothing more is sent on them (nor on one that opens later), and returns the reliable
    /// messages sent on them that SCTP has not acknowledged (those of its channels that
    /// closed first included).
    pub(crate) async fn take_unacknowledged(&self, key: u64) -> Unacknowledged {
        let (entry, closed) = self.with_write(|channels| {
            channels.retired.insert(key);
            let closed = channels.closed_unacknowledged.remove(&key);
            (channels.open.remove(&key), closed.unwrap_or_default())
        });
        let mut unacknowledged = Unacknowledged {
            messages: closed.messages.into(),
            dropped: closed.dropped,
        };
        for channel in entry.iter().flat_map(|entry| &entry.reliable) {
            let messages = channel.sender.take_unacknowledged().await;
            unacknowledged.messages.extend(messages);
        }
        unacknowledged
    }

    /// For every peer with an open reliable channel, how many messages sent on its reliable
    /// channels SCTP has not acknowledged yet.
    pub(crate) async fn unacknowledged(&self) -> Vec<(PeerId, usize)> {
        let senders: Vec<(PeerId, ChannelSender)> = self.with_read(|map| {
            map.values()
                .flat_map(|entry| {
                    let peer = read_remote(&entry.remote);
                    entry
                        .reliable
                        .iter()
                        .map(move |channel| (peer.clone(), channel.sender.clone()))
                })
                .collect()
        });
        let mut counts: Vec<(PeerId, usize)> = Vec::new();
        for (peer, sender) in senders {
            let count = sender.unacknowledged().await;
            match counts.iter_mut().find(|(known, _)| *known == peer) {
                Some((_, total)) => *total += count,
                None => counts.push((peer, count)),
            }
        }
        counts
    }

    /// The open channel of that kind to that peer.
    pub(crate) fn get(&self, peer: &PeerId, kind: ChannelKind) -> Option<ChannelSender> {
        self.with_read(|map| {
            map.values()
                .find(|entry| &read_remote(&entry.remote) == peer)
                .and_then(|entry| entry.sending(kind))
        })
    }

    /// Every open channel of that kind, with its peer.
    pub(crate) fn all(&self, kind: ChannelKind) -> Vec<(PeerId, ChannelSender)> {
        self.with_read(|map| {
            map.values()
                .filter_map(|entry| Some((read_remote(&entry.remote), entry.sending(kind)?)))
                .collect()
        })
    }
}

impl PeerChannels {
    fn of_kind(&mut self, kind: ChannelKind) -> &mut Vec<SendChannel> {
        match kind {
            ChannelKind::Reliable => &mut self.reliable,
            ChannelKind::Unreliable => &mut self.unreliable,
        }
    }

    /// The channel to send `kind` on, if one is open.
    fn sending(&self, kind: ChannelKind) -> Option<ChannelSender> {
        let open = match kind {
            ChannelKind::Reliable => &self.reliable,
            ChannelKind::Unreliable => &self.unreliable,
        };
        let index = send_index(open.iter().map(|channel| channel.named))?;
        Some(open[index].sender.clone())
    }
}

/// What a reader of one of a connection's channels needs.
pub(crate) struct ChannelContext {
    pub(crate) key: u64,
    pub(crate) remote: RemoteId,
    pub(crate) registry: Arc<ChannelRegistry>,
    pub(crate) events: mpsc::Sender<PeerEvent>,
    pub(crate) carried_over: CarriedOver,
    pub(crate) readers: ChannelReaders,
}

/// The reader tasks of one connection's channels, so that closing the connection closes
/// its channels first and can wait until they were read to their close.
#[derive(Clone, Default)]
pub(crate) struct ChannelReaders {
    tasks: TaskTracker,
    closing: CancellationToken,
}

impl ChannelReaders {
    /// Closes every channel of the connection (a reader busy handing a message on closes its
    /// channel after it). `webrtc` reports a channel we close as closed without waiting for
    /// the peer, so its reader ends soon after, dropping what the peer sends after that.
    pub(crate) fn close(&self) {
        self.closing.cancel();
    }

    /// Waits until every reader ended, having handed on what arrived before its channel's
    /// close, `wait` at most; `false` if some had not.
    pub(crate) async fn ended(&self, wait: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(wait, self.tasks.wait()).await.is_ok()
    }
}

/// Closes a reader's channel, once, when its connection closes ([`ChannelReaders::close`]).
struct ChannelCloser<'a> {
    dc: &'a Arc<dyn DataChannel>,
    kind: ChannelKind,
    sent: bool,
}

impl ChannelCloser<'_> {
    async fn close(&mut self) {
        self.sent = true;
        // Closed already (by the peer) is not an error: what it sent before is still read,
        // up to the close.
        if let Err(err) = self.dc.close().await {
            tracing::debug!(kind = %self.kind, "closing a data channel: {err}");
        }
    }
}

/// Sends `messages`, which a replaced connection had not had acknowledged, on `sender`: the
/// successor's first reliable channel whose label names the kind, before anything else goes
/// there. [`PeerEvent::Resent`] says how many went.
async fn send_carried_over(ctx: &ChannelContext, sender: &ChannelSender, messages: Vec<Outgoing>) {
    if messages.is_empty() {
        return;
    }
    let mut sent = 0;
    for message in messages {
        match sender.send(message).await {
            Ok(()) => sent += 1,
            Err(err) => tracing::debug!("a message carried over was not sent: {err}"),
        }
    }
    let _ = ctx
        .events
        .send(PeerEvent::Resent {
            peer: read_remote(&ctx.remote),
            messages: sent,
        })
        .await;
}

/// Reads a channel's events until it closes, registering it while open; closes it when its
/// connection closes ([`ChannelReaders::close`]) and reads on until the close is answered.
pub(crate) fn spawn_reader(ctx: ChannelContext, dc: Arc<dyn DataChannel>) {
    let tasks = ctx.readers.tasks.clone();
    tasks.spawn(async move {
        let ChannelContext {
            key,
            remote,
            registry,
            events,
            readers,
            ..
        } = &ctx;
        let label = dc.label().await.unwrap_or_default();
        let (kind, named) = classify(&label, dc.ordered().await.unwrap_or(true));
        let id = dc.id();
        let mut open = false;
        let mut closer = ChannelCloser {
            dc: &dc,
            kind,
            sent: false,
        };
        // Its sender once open: its log is refreshed while the channel is open, so that when
        // the peer closes it only what was not acknowledged a moment before counts as such
        // ([`ChannelRegistry::remove`]).
        let mut logged: Option<ChannelSender> = None;
        let mut refresh = tokio::time::interval(SENT_LOG_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = dc.poll() => event,
                () = readers.closing.cancelled(), if !closer.sent => {
                    closer.close().await;
                    continue;
                }
                _ = refresh.tick(), if logged.is_some() => {
                    if let Some(sender) = &logged {
                        sender.refresh().await;
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                DataChannelEvent::OnOpen if !open => {
                    open = true;
                    let sender = ChannelSender::new(dc.clone(), kind);
                    if sender.sent.is_some() {
                        logged = Some(sender.clone());
                    }
                    if kind == ChannelKind::Reliable && named {
                        // The connection's named reliable channels are registered one at a
                        // time past this lock: the first sends what its predecessor left
                        // unacknowledged and is registered first, so `Peer::send` goes on
                        // there, after them ([`send_index`]).
                        let mut carried_over = ctx.carried_over.lock().await;
                        let messages = std::mem::take(&mut *carried_over);
                        send_carried_over(&ctx, &sender, messages).await;
                        registry.insert(*key, remote, kind, sender, named);
                    } else {
                        registry.insert(*key, remote, kind, sender, named);
                    }
                    let _ = events
                        .send(PeerEvent::ChannelOpen {
                            peer: read_remote(remote),
                            kind,
                        })
                        .await;
                }
                DataChannelEvent::OnMessage(message) => {
                    // An application that does not read while it closes (a full event
                    // queue) does not hold the channel's close back.
                    let reserve = events.reserve();
                    tokio::pin!(reserve);
                    let permit = loop {
                        tokio::select! {
                            permit = &mut reserve => break permit.ok(),
                            () = readers.closing.cancelled(), if !closer.sent => {
                                closer.close().await;
                            }
                        }
                    };
                    let Some(permit) = permit else { break };
                    // Queued under the id's lock: a rename of the peer (its `PeerRenamed`,
                    // queued under the same lock) comes before any message under its new id.
                    let id = remote.read().unwrap_or_else(PoisonError::into_inner);
                    permit.send(PeerEvent::Message {
                        from: id.clone(),
                        kind,
                        text: message.is_string,
                        data: message.data.freeze(),
                    });
                }
                DataChannelEvent::OnClose => break,
                DataChannelEvent::OnError => {
                    tracing::debug!(%kind, "data channel error");
                }
                _ => {}
            }
        }
        registry.remove(*key, kind, id);
        if open {
            let _ = events
                .send(PeerEvent::ChannelClosed {
                    peer: read_remote(remote),
                    kind,
                })
                .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_channels_keep_the_newest_unacknowledged_up_to_the_limit_and_count_the_rest() {
        let message = Outgoing {
            data: bytes::Bytes::from(vec![b'x'; CLOSED_UNACKNOWLEDGED_LIMIT / 2]),
            text: false,
        };
        let mut closed = ClosedUnacknowledged::default();
        closed.extend(vec![message.clone(); 2]);
        assert_eq!((closed.messages.len(), closed.dropped), (2, 0));
        closed.extend(vec![message; 3]);
        assert_eq!((closed.messages.len(), closed.dropped), (2, 3));
        assert_eq!(closed.bytes, CLOSED_UNACKNOWLEDGED_LIMIT);
    }

    #[test]
    fn channels_are_told_by_label_first_then_by_their_ordered_flag() {
        use ChannelKind::{Reliable, Unreliable};
        for (label, ordered, expected) in [
            ("chat", true, (Reliable, true)),
            ("reliable", true, (Reliable, true)),
            ("cursor", false, (Unreliable, true)),
            ("unreliable", false, (Unreliable, true)),
            // The demo's drawing state is never chat, however a client opens it.
            ("canvas", false, (Unreliable, false)),
            ("canvas", true, (Unreliable, false)),
            ("game", true, (Reliable, false)),
            ("game", false, (Unreliable, false)),
        ] {
            assert_eq!(
                classify(label, ordered),
                expected,
                "{label} ordered={ordered}"
            );
        }
    }

    #[test]
    fn the_first_open_channel_whose_label_names_the_kind_is_sent_on() {
        assert_eq!(send_index([]), None);
        assert_eq!(send_index([false]), Some(0));
        assert_eq!(send_index([false, false]), Some(0));
        // A named one that opens later takes over.
        assert_eq!(send_index([false, true]), Some(1));
        assert_eq!(send_index([true, false, true]), Some(0));
    }
}
