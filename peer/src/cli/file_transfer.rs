//! `peer send-file` / `peer recv-file`: one file over the reliable data channel, verified
//! with SHA-256.
//!
//! Wire format on the channel: a text header `{"type":"file-header","name":..,"size":..,
//! "sha256":..}`, the content as binary messages of [`CHUNK`] bytes, a text
//! `{"type":"file-end"}`; the receiver answers `{"type":"file-result","ok":..,"sha256":..}`.
//! Both sides exit non-zero when the checksums differ.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use peer::protocol::PeerId;
use peer::{ChannelKind, PeerEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CommonArgs;

/// Bytes per data-channel message.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Control {
    #[serde(rename = "file-header")]
    Header {
        name: String,
        size: u64,
        sha256: String,
    },
    #[serde(rename = "file-end")]
    End,
    #[serde(rename = "file-result")]
    Result { ok: bool, sha256: String },
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

async fn file_sha256(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

pub(crate) async fn send(url: &str, path: &Path, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let (size, sha256) = file_sha256(path).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let (peer, mut events) = super::join(url, common).await?;
    let to = super::first_open_peer(&mut events).await?;
    out.notice(
        "sending",
        &[("peer", to.to_string()), ("bytes", size.to_string())],
    );

    let header = Control::Header {
        name,
        size,
        sha256: sha256.clone(),
    };
    peer.send_text(&to, ChannelKind::Reliable, &serde_json::to_string(&header)?)
        .await?;
    let bar = progress(size);
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        peer.send(
            &to,
            ChannelKind::Reliable,
            bytes::Bytes::copy_from_slice(&buf[..n]),
        )
        .await?;
        bar.inc(n as u64);
    }
    peer.send_text(
        &to,
        ChannelKind::Reliable,
        &serde_json::to_string(&Control::End)?,
    )
    .await?;
    bar.finish();

    // Wait for the receiver's verdict.
    let verdict = loop {
        match events.recv().await {
            Some(PeerEvent::Message {
                from,
                text: true,
                data,
                ..
            }) if from == to => {
                if let Ok(Control::Result { ok, sha256 }) = serde_json::from_slice(&data) {
                    break Some((ok, sha256));
                }
            }
            Some(PeerEvent::PeerLeft { peer: left, .. }) if left == to => break None,
            Some(_) => {}
            None => break None,
        }
    };
    peer.close().await;
    match verdict {
        Some((true, _)) => {
            out.notice(
                "file-sent",
                &[
                    ("bytes", size.to_string()),
                    ("sha256", sha256),
                    ("ok", "true".into()),
                ],
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((false, theirs)) => {
            out.notice(
                "file-sent",
                &[
                    ("bytes", size.to_string()),
                    ("sha256", sha256),
                    ("received_sha256", theirs),
                    ("ok", "false".into()),
                ],
            );
            Ok(ExitCode::FAILURE)
        }
        None => bail!("the receiver left before confirming the checksum"),
    }
}

pub(crate) async fn receive(
    url: &str,
    out_path: &Path,
    common: &CommonArgs,
) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let (peer, mut events) = super::join(url, common).await?;
    let mut file = tokio::fs::File::create(out_path)
        .await
        .with_context(|| format!("create {}", out_path.display()))?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut expected: Option<(PeerId, u64, String)> = None;
    let mut bar: Option<ProgressBar> = None;
    while let Some(event) = events.recv().await {
        match event {
            PeerEvent::Message {
                from,
                text,
                data,
                kind: ChannelKind::Reliable,
            } => {
                if text {
                    match serde_json::from_slice::<Control>(&data) {
                        Ok(Control::Header { name, size, sha256 }) => {
                            out.notice(
                                "receiving",
                                &[
                                    ("peer", from.to_string()),
                                    ("name", name),
                                    ("bytes", size.to_string()),
                                ],
                            );
                            bar = Some(progress(size));
                            expected = Some((from, size, sha256));
                        }
                        Ok(Control::End) => {
                            let Some((sender, size, want)) = expected.take() else {
                                bail!("file-end before file-header");
                            };
                            file.flush().await?;
                            if let Some(bar) = &bar {
                                bar.finish();
                            }
                            let got = hex::encode(std::mem::take(&mut hasher).finalize());
                            let ok = got == want && received == size;
                            let reply = Control::Result {
                                ok,
                                sha256: got.clone(),
                            };
                            peer.send_text(
                                &sender,
                                ChannelKind::Reliable,
                                &serde_json::to_string(&reply)?,
                            )
                            .await?;
                            out.notice(
                                "file-received",
                                &[
                                    ("path", out_path.display().to_string()),
                                    ("bytes", received.to_string()),
                                    ("sha256", got),
                                    ("expected_sha256", want),
                                    ("ok", ok.to_string()),
                                ],
                            );
                            // Let the verdict reach the sender before leaving.
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            peer.close().await;
                            return Ok(if ok {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::FAILURE
                            });
                        }
                        _ => {}
                    }
                } else if expected
                    .as_ref()
                    .is_some_and(|(sender, _, _)| *sender == from)
                {
                    hasher.update(&data);
                    file.write_all(&data).await?;
                    received += data.len() as u64;
                    if let Some(bar) = &bar {
                        bar.inc(data.len() as u64);
                    }
                }
            }
            PeerEvent::PeerLeft { peer: left, .. }
                if expected
                    .as_ref()
                    .is_some_and(|(sender, _, _)| *sender == left) =>
            {
                bail!("the sender left before the file was complete ({received} bytes received)");
            }
            PeerEvent::SignalingClosed { message } => bail!("signaling closed: {message}"),
            _ => {}
        }
    }
    bail!("peer closed before a file arrived")
}
