//! `peer send-file` / `peer recv-file`: one file over the reliable data channel, verified
//! with SHA-256.
//!
//! Wire format on the channel: a text header `{"type":"file-header","name":..,"size":..,
//! "sha256":..,"offsets":true}`, the content as binary messages of an 8-byte big-endian
//! offset and up to [`CHUNK`] bytes from there, a text `{"type":"file-end"}`; the receiver
//! answers `{"type":"file-result","ok":..,"sha256":..}`. Both sides exit non-zero when the
//! checksums differ. A peer that does not take files (a `peer join` chat) answers the header
//! with `{"type":"file-declined","reason":..}`, and the sender stops; so does a receiver
//! given a header without `offsets` (an older sender, whose chunks carry none).
//!
//! A connection replaced mid-file (the SDK's [`PeerEvent::ConnectionReplaced`]) does not end
//! the transfer: the SDK sends again on the new connection, first, what the old one had not
//! delivered, and what was being sent when the channel closed is sent again once the new
//! connection's channel opens ([`send_reliably`]). A message that arrives twice that way is
//! recognised by its offset (a header, by being the same header) and taken once. A peer whose
//! signaling session ended re-joins under a new id and keeps its connection
//! ([`PeerEvent::PeerRenamed`]): both sides follow the other under its new id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::FutureExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use peer::protocol::PeerId;
use peer::{ChannelKind, Peer, PeerError, PeerEvent, PeerEvents};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CommonArgs, Output, Stop};

/// File bytes per data-channel message (after its 8-byte offset).
const CHUNK: usize = 16 * 1024;
/// How long a transfer whose channel closed under it waits for the channel of the connection
/// that replaces it.
const REOPEN_WAIT: Duration = Duration::from_secs(30);
/// How often, meanwhile, it tries that channel.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The text messages of a transfer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum Control {
    #[serde(rename = "file-header")]
    Header {
        name: String,
        size: u64,
        sha256: String,
        /// Every chunk starts with its offset (absent: an older sender, whose chunks do not).
        #[serde(default)]
        offsets: bool,
    },
    #[serde(rename = "file-end")]
    End,
    #[serde(rename = "file-result")]
    Result { ok: bool, sha256: String },
    /// The peer does not take the file (it is no `recv-file`).
    #[serde(rename = "file-declined")]
    Declined { reason: String },
}

fn progress(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Opens the file to send: a regular file (not a directory), named in any error.
async fn open_source(path: &Path) -> anyhow::Result<tokio::fs::File> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a directory: send-file sends one file",
            path.display()
        );
    }
    Ok(file)
}

/// Reads the next chunk of the file being sent into `buf` (0 at its end), named in any error.
async fn read_chunk(
    file: &mut tokio::fs::File,
    buf: &mut [u8],
    path: &Path,
) -> anyhow::Result<usize> {
    file.read(buf)
        .await
        .with_context(|| format!("read {}", path.display()))
}

async fn file_sha256(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = open_source(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = read_chunk(&mut file, &mut buf, path).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

pub(crate) async fn send(
    url: &str,
    path: &Path,
    common: &CommonArgs,
    stop: &mut Stop,
) -> anyhow::Result<ExitCode> {
    let (size, sha256) = stop.guard(file_sha256(path)).await??;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let offer = Offer {
        path: path.to_owned(),
        name,
        size,
        sha256,
    };
    stop.in_room(
        url,
        common,
        super::Leave::AtOnce,
        None,
        async |peer, events| send_to_first_peer(peer, events, offer, common.output()).await,
    )
    .await??
}

/// The file being sent.
struct Offer {
    path: PathBuf,
    name: String,
    size: u64,
    sha256: String,
}

/// How the receiver answered.
enum Verdict {
    /// Its checksum, and whether it matches.
    Checked { ok: bool, sha256: String },
    /// It does not take files.
    Declined(String),
    /// It left (or our peer closed) before answering.
    Gone,
}

/// Why [`send_reliably`] did not send.
enum Unsent {
    /// The other side's verdict on the transfer came meanwhile (it left, or declined).
    Verdict(Verdict),
    /// No channel to the other side came back within [`REOPEN_WAIT`].
    NoChannel,
    /// The SDK refused it otherwise.
    Failed(PeerError),
}

/// A message of the transfer.
enum Payload {
    Text(String),
    Binary(bytes::Bytes),
}

/// Sends `payload` to `to` on its reliable channel. When that channel closes under it (its
/// connection is being replaced: the SDK sends again on the new one, first, what the old one
/// had not delivered), it is tried again every [`RETRY_EVERY`], for up to [`REOPEN_WAIT`],
/// until the new connection's channel takes it.
async fn send_reliably(
    peer: &Peer,
    events: &mut PeerEvents,
    to: &mut PeerId,
    payload: &Payload,
) -> Result<(), Unsent> {
    let deadline = tokio::time::Instant::now() + REOPEN_WAIT;
    loop {
        let sent = match payload {
            Payload::Text(text) => peer.send_text(to, ChannelKind::Reliable, text).await,
            Payload::Binary(data) => peer.send(to, ChannelKind::Reliable, data.clone()).await,
        };
        match sent {
            Ok(()) => return Ok(()),
            Err(PeerError::ChannelNotOpen { .. } | PeerError::Replaced) => {}
            Err(error) => return Err(Unsent::Failed(error)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Unsent::NoChannel);
        }
        if let Ok(event) = tokio::time::timeout(RETRY_EVERY, events.recv()).await
            && let Some(verdict) = verdict(event, to)
        {
            return Err(Unsent::Verdict(verdict));
        }
    }
}

/// The receiver's answer in `event`, if it is one. A re-join of the receiver that took its
/// connection over under a new id ([`PeerEvent::PeerRenamed`]) makes `to` that id.
fn verdict(event: Option<PeerEvent>, to: &mut PeerId) -> Option<Verdict> {
    match event {
        Some(PeerEvent::PeerRenamed { old, new }) if old == *to => {
            *to = new;
            None
        }
        Some(PeerEvent::Message {
            from,
            text: true,
            data,
            ..
        }) if from == *to => match serde_json::from_slice(&data) {
            Ok(Control::Result { ok, sha256 }) => Some(Verdict::Checked { ok, sha256 }),
            Ok(Control::Declined { reason }) => Some(Verdict::Declined(reason)),
            _ => None,
        },
        Some(PeerEvent::PeerLeft { peer: left, .. }) if left == *to => Some(Verdict::Gone),
        Some(_) => None,
        None => Some(Verdict::Gone),
    }
}

/// Sends `offer` to the first peer that connects and waits for its verdict.
async fn send_to_first_peer(
    peer: &Peer,
    events: &mut PeerEvents,
    offer: Offer,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let Offer {
        path,
        name,
        size,
        sha256,
    } = offer;
    let mut to = super::first_open_peer(events).await?;
    out.notice_values(
        "sending",
        &[("peer", to.as_str().into()), ("bytes", size.into())],
    );

    let header = Control::Header {
        name,
        size,
        sha256: sha256.clone(),
        offsets: true,
    };
    let header = Payload::Text(serde_json::to_string(&header)?);
    let mut early = match send_reliably(peer, events, &mut to, &header).await {
        Ok(()) => None,
        Err(Unsent::Verdict(verdict)) => Some(verdict),
        Err(Unsent::NoChannel) => bail!(
            "the channel to the receiver closed before the file was sent (0 of {size} bytes sent)"
        ),
        Err(Unsent::Failed(error)) => return Err(error.into()),
    };
    let bar = progress(size);
    let mut file = open_source(&path).await?;
    let mut buf = vec![0u8; 8 + CHUNK];
    loop {
        // A receiver that declines (or leaves) answers before the end: stop there.
        while early.is_none()
            && let Some(event) = events.recv().now_or_never()
        {
            early = verdict(event, &mut to);
        }
        if early.is_some() {
            break;
        }
        let n = read_chunk(&mut file, &mut buf[8..], &path).await?;
        if n == 0 {
            break;
        }
        buf[..8].copy_from_slice(&bar.position().to_be_bytes());
        let chunk = Payload::Binary(bytes::Bytes::copy_from_slice(&buf[..8 + n]));
        match send_reliably(peer, events, &mut to, &chunk).await {
            Ok(()) => bar.inc(n as u64),
            Err(Unsent::Verdict(verdict)) => early = Some(verdict),
            Err(Unsent::Failed(error)) => {
                bar.abandon();
                return Err(error.into());
            }
            Err(Unsent::NoChannel) => {
                // The channel closed under us and no other came: the receiver stopped.
                bar.abandon();
                bail!(
                    "the channel to the receiver closed before the file was sent ({} of {size} \
                     bytes sent)",
                    bar.position()
                );
            }
        }
    }
    let sent = bar.position();
    let verdict = match early {
        Some(verdict) => {
            bar.abandon();
            verdict
        }
        None => {
            let end = Payload::Text(serde_json::to_string(&Control::End)?);
            let seen = send_reliably(peer, events, &mut to, &end).await;
            bar.finish();
            match seen {
                Ok(()) => loop {
                    if let Some(verdict) = verdict(events.recv().await, &mut to) {
                        break verdict;
                    }
                },
                Err(Unsent::Verdict(verdict)) => verdict,
                // No channel came back to take the end.
                Err(Unsent::NoChannel) => Verdict::Gone,
                Err(Unsent::Failed(error)) => return Err(error.into()),
            }
        }
    };
    let mut fields: Vec<(&str, serde_json::Value)> =
        vec![("bytes", size.into()), ("sha256", sha256.into())];
    match verdict {
        Verdict::Checked { ok: true, .. } => {
            fields.push(("ok", true.into()));
            out.notice_values("file-sent", &fields);
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Checked { ok: false, sha256 } => {
            fields.push(("received_sha256", sha256.into()));
            fields.push(("ok", false.into()));
            out.notice_values("file-sent", &fields);
            Ok(ExitCode::FAILURE)
        }
        Verdict::Declined(reason) => {
            bail!("peer {to} declined the file: {}", super::escape(&reason))
        }
        Verdict::Gone if sent < size => {
            bail!("the receiver left before the file was sent ({sent} of {size} bytes sent)")
        }
        Verdict::Gone => {
            bail!("the receiver left before confirming the checksum (all {size} bytes were sent)")
        }
    }
}

pub(crate) async fn receive(
    url: &str,
    out_path: &Path,
    common: &CommonArgs,
    stop: &mut Stop,
) -> anyhow::Result<ExitCode> {
    // Before joining: a path that cannot be written fails without the room seeing us (a FIFO
    // without a reader blocks here, and a signal still stops it).
    let mut target = stop.guard(Target::open(out_path)).await??;
    let outcome = stop
        .in_room(
            url,
            common,
            super::Leave::Gracefully,
            None,
            async |peer, events| receive_one(peer, events, &mut target, common.output()).await,
        )
        .await?;
    if matches!(target.sink, Sink::Staged { .. }) {
        // Never settled: the temporary file goes with `target`.
        eprintln!(
            "warning: transfer incomplete: {} left as it was",
            out_path.display()
        );
    }
    outcome?
}

/// Where a received file goes.
struct Target {
    sink: Sink,
    /// The name the user gave, for messages.
    shown: PathBuf,
}

enum Sink {
    /// A regular file, or none yet: the file is written to a temporary file (beside it, or,
    /// for an existing file in a directory that is not writable, in the temporary directory:
    /// [`stage_beside`]), and only a whole file with
    /// the right checksum reaches `dest`. Anything else removes just the temporary file (on
    /// drop): an existing file is never truncated or lost.
    Staged {
        file: tokio::fs::File,
        staged: tempfile::NamedTempFile,
        dest: PathBuf,
        /// `dest` is a file already: its content is replaced in place (its mode, owner and
        /// links stay), not the file itself.
        existing: bool,
    },
    /// Something that is no regular file (`/dev/null`, a pipe): written to directly.
    Direct { file: tokio::fs::File },
    /// Put in place or discarded.
    Done,
}

impl Target {
    async fn open(out_path: &Path) -> anyhow::Result<Self> {
        let context = || format!("create {}", out_path.display());
        let dest = resolve_links(out_path);
        let existing = tokio::fs::metadata(&dest).await.ok();
        if existing.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            bail!(
                "{} is a directory: give the file's path",
                out_path.display()
            );
        }
        let sink = match existing {
            Some(meta) if !meta.is_file() => {
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&dest)
                    .await
                    .with_context(context)?;
                Sink::Direct { file }
            }
            existing => {
                let staged = stage_beside(&dest, existing.is_some()).with_context(context)?;
                let file = staged.reopen().with_context(context)?;
                Sink::Staged {
                    file: tokio::fs::File::from_std(file),
                    staged,
                    dest,
                    existing: existing.is_some(),
                }
            }
        };
        Ok(Self {
            sink,
            shown: out_path.to_owned(),
        })
    }

    async fn write_all(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let file = match &mut self.sink {
            Sink::Staged { file, .. } | Sink::Direct { file } => file,
            Sink::Done => bail!("data after the end of {}", self.shown.display()),
        };
        file.write_all(data)
            .await
            .with_context(|| format!("write {}", self.shown.display()))
    }

    /// The transfer ended: a right file (`ok`) is put in place; a wrong one is discarded, and
    /// the destination stays as it was (a direct sink has had it already).
    async fn settle(&mut self, ok: bool) -> anyhow::Result<()> {
        let context = || format!("write {}", self.shown.display());
        match std::mem::replace(&mut self.sink, Sink::Done) {
            Sink::Staged {
                mut file,
                staged,
                dest,
                existing,
            } => {
                if !ok {
                    return Ok(());
                }
                file.flush().await.with_context(context)?;
                file.sync_all().await.with_context(context)?;
                drop(file);
                if existing {
                    // In place: the content changes, not the file (mode, owner, hard links;
                    // `fs::copy` would give it the temporary file's mode).
                    let mut from = tokio::fs::File::open(staged.path())
                        .await
                        .with_context(context)?;
                    let mut to = tokio::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&dest)
                        .await
                        .with_context(context)?;
                    tokio::io::copy(&mut from, &mut to)
                        .await
                        .with_context(context)?;
                    to.sync_all().await.with_context(context)?;
                } else if let Err(err) = staged.persist_noclobber(&dest) {
                    // Another file system (the temporary directory), or a file that appeared
                    // meanwhile: copy, creating or replacing it.
                    tokio::fs::copy(err.file.path(), &dest)
                        .await
                        .with_context(context)?;
                }
            }
            Sink::Direct { mut file } => file.flush().await.with_context(context)?,
            Sink::Done => {}
        }
        Ok(())
    }
}

/// `path` with its symlinks followed, as a write through it would: the file they lead to,
/// even one that does not exist yet (a dangling link is written through, not replaced).
fn resolve_links(path: &Path) -> PathBuf {
    let mut current = path.to_owned();
    // A loop of links gives up after a few hops, as the kernel does (ELOOP).
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        current = match current.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
    }
    current
}

/// A temporary file in `dest`'s directory (so that putting it in place is a rename). When that
/// directory is not writable (or does not exist), the temporary directory serves for an
/// `existing` destination, whose content is replaced in place; for a new one it is an error,
/// before anything is received (it could not be created at the end either).
fn stage_beside(dest: &Path, existing: bool) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(".part")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    match builder.tempfile_in(&dir) {
        Err(_) if existing => builder.tempfile(),
        staged => staged,
    }
}

/// A transfer in progress.
struct Incoming {
    sender: PeerId,
    size: u64,
    sha256: String,
    received: u64,
    hasher: Sha256,
    bar: ProgressBar,
}

/// Receives one file into `target` and answers its sender with the checksum.
async fn receive_one(
    peer: &Peer,
    events: &mut PeerEvents,
    target: &mut Target,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let mut incoming: Option<Incoming> = None;
    while let Some(event) = events.recv().await {
        match event {
            PeerEvent::Message {
                from,
                text: true,
                data,
                kind: ChannelKind::Reliable,
            } => match serde_json::from_slice::<Control>(&data) {
                Ok(Control::Header { offsets: false, .. }) => {
                    let reason = "this recv-file takes chunks with their offsets: the sender's \
                                  peer is older";
                    let declined = Control::Declined {
                        reason: reason.into(),
                    };
                    let _ = peer
                        .send_text(
                            &from,
                            ChannelKind::Reliable,
                            &serde_json::to_string(&declined)?,
                        )
                        .await;
                    bail!("{reason}");
                }
                Ok(Control::Header {
                    name, size, sha256, ..
                }) if !incoming
                    .as_ref()
                    .is_some_and(|i| i.sender == from && i.sha256 == sha256 && i.size == size) =>
                {
                    out.notice_values(
                        "receiving",
                        &[
                            ("peer", from.as_str().into()),
                            ("name", name.into()),
                            ("bytes", size.into()),
                        ],
                    );
                    incoming = Some(Incoming {
                        sender: from,
                        size,
                        sha256,
                        received: 0,
                        hasher: Sha256::new(),
                        bar: progress(size),
                    });
                }
                Ok(Control::End) => {
                    let Some(done) = incoming.take() else {
                        bail!("file-end before file-header");
                    };
                    return finish(peer, events, target, done, out).await;
                }
                _ => {}
            },
            PeerEvent::Message {
                from,
                text: false,
                data,
                kind: ChannelKind::Reliable,
            } => {
                if let Some(incoming) = incoming.as_mut().filter(|i| i.sender == from) {
                    // What arrives twice (sent again on a connection that replaced the one
                    // before) is taken once, by its offset.
                    let Some((offset, bytes)) = data.split_first_chunk::<8>() else {
                        bail!("a file chunk without its offset");
                    };
                    let offset = u64::from_be_bytes(*offset);
                    if offset > incoming.received {
                        bail!(
                            "the file has a gap: bytes from {offset} arrived after {} bytes",
                            incoming.received
                        );
                    }
                    let skip = usize::try_from(incoming.received - offset).unwrap_or(usize::MAX);
                    let Some(new) = bytes.get(skip..) else {
                        continue;
                    };
                    incoming.hasher.update(new);
                    target.write_all(new).await?;
                    incoming.received += new.len() as u64;
                    incoming.bar.inc(new.len() as u64);
                }
            }
            // The sender re-joined and took its connection over under a new id.
            PeerEvent::PeerRenamed { old, new } => {
                if let Some(incoming) = incoming.as_mut().filter(|i| i.sender == old) {
                    incoming.sender = new;
                }
            }
            PeerEvent::PeerLeft { peer: left, .. }
                if incoming.as_ref().is_some_and(|i| i.sender == left) =>
            {
                let received = incoming.map_or(0, |i| i.received);
                bail!("the sender left before the file was complete ({received} bytes received)");
            }
            PeerEvent::SignalingClosed { message, .. } => bail!("signaling closed: {message}"),
            _ => {}
        }
    }
    bail!("peer closed before a file arrived")
}

/// The file is all there: checks it, tells the sender, reports.
async fn finish(
    peer: &Peer,
    events: &mut PeerEvents,
    target: &mut Target,
    mut done: Incoming,
    out: Output,
) -> anyhow::Result<ExitCode> {
    done.bar.finish();
    let got = hex::encode(done.hasher.finalize());
    let ok = got == done.sha256 && done.received == done.size;
    target.settle(ok).await?;
    let reply = Control::Result {
        ok,
        sha256: got.clone(),
    };
    let reply = Payload::Text(serde_json::to_string(&reply)?);
    // The file is in place (or not) whatever comes of the reply: a sender that leaves as soon
    // as it has read it may close the channel while the send is still being confirmed.
    match send_reliably(peer, events, &mut done.sender, &reply).await {
        Ok(()) => {}
        Err(Unsent::Verdict(_) | Unsent::NoChannel) => {
            eprintln!("warning: the checksum may not have reached the sender: its channel closed");
        }
        Err(Unsent::Failed(error)) => {
            eprintln!("warning: the checksum may not have reached the sender: {error}");
        }
    }
    out.notice_values(
        "file-received",
        &[
            ("path", target.shown.display().to_string().into()),
            ("bytes", done.received.into()),
            ("sha256", got.into()),
            ("expected_sha256", done.sha256.into()),
            ("ok", ok.into()),
        ],
    );
    // Let the verdict reach the sender before leaving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target at `path` that received `content`, settled as `ok`.
    async fn receive_into(path: &Path, content: &[u8], ok: bool) {
        let mut target = Target::open(path).await.expect("open target");
        target.write_all(content).await.expect("write");
        target.settle(ok).await.expect("settle");
    }

    #[tokio::test]
    async fn only_a_checked_file_reaches_the_destination_and_an_existing_one_stays_itself() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.bin");
        // A new file: created with the content.
        receive_into(&out, b"first", true).await;
        assert_eq!(std::fs::read(&out).unwrap(), b"first");
        // A wrong file (checksum or size): the destination stays as it was.
        receive_into(&out, b"corrupt", false).await;
        assert_eq!(std::fs::read(&out).unwrap(), b"first");
        // An existing file keeps its mode and its hard links.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.bin");
        std::fs::hard_link(&out, &link).unwrap();
        receive_into(&out, b"second", true).await;
        assert_eq!(std::fs::read(&link).unwrap(), b"second");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing temporary is left behind.
        assert_eq!(testkit::dir_names(dir.path()), ["link.bin", "out.bin"]);
    }

    #[tokio::test]
    async fn a_new_file_in_a_missing_directory_is_refused_before_anything_arrives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("missing").join("out.bin");
        let Err(err) = Target::open(&out).await else {
            panic!("opened {}", out.display());
        };
        let line = super::super::error_chain(&err);
        assert!(line.contains(&out.display().to_string()), "{line}");
        assert!(line.contains("No such file or directory"), "{line}");
    }

    #[tokio::test]
    async fn a_dangling_symlink_is_written_through_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        receive_into(&link, b"through", true).await;
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(dir.path().join("real.bin")).unwrap(),
            b"through"
        );
        assert_eq!(testkit::dir_names(dir.path()), ["link.bin", "real.bin"]);
    }

    #[tokio::test]
    async fn a_directory_is_refused_by_name() {
        let dir = std::env::temp_dir();
        let err = file_sha256(&dir).await.expect_err("a directory");
        let line = super::super::error_chain(&err);
        assert!(line.contains(&dir.display().to_string()), "{line}");
        assert!(line.contains("is a directory"), "{line}");
    }

    #[test]
    fn a_declined_offer_is_one_control_message() {
        let declined = Control::Declined {
            reason: "no".into(),
        };
        let text = serde_json::to_string(&declined).expect("JSON");
        assert_eq!(text, r#"{"type":"file-declined","reason":"no"}"#);
        let mut to: PeerId = serde_json::from_str(r#""abc""#).expect("peer id");
        let event = PeerEvent::Message {
            from: to.clone(),
            kind: ChannelKind::Reliable,
            text: true,
            data: text.into(),
        };
        assert!(matches!(verdict(Some(event), &mut to), Some(Verdict::Declined(r)) if r == "no"));
        assert!(matches!(verdict(None, &mut to), Some(Verdict::Gone)));
    }

    #[test]
    fn a_renamed_receiver_is_followed_and_anothers_rename_is_not() {
        let id = |text: &str| -> PeerId { serde_json::from_str(&format!("{text:?}")).unwrap() };
        let mut to = id("abc");
        let renamed = |old: &str, new: &str| PeerEvent::PeerRenamed {
            old: id(old),
            new: id(new),
        };
        assert!(verdict(Some(renamed("xyz", "def")), &mut to).is_none());
        assert_eq!(to, id("abc"));
        assert!(verdict(Some(renamed("abc", "def")), &mut to).is_none());
        assert_eq!(to, id("def"));
    }
}
