"""A small WebRTC chat peer on aiortc, for interop tests against `signaling`, `relay` and `peer`.

Written from the public docs alone (docs/protocol.md and README.md), not from this project's
source: it checks that a client built from the docs interoperates with our servers and CLI.

    python3 tests/aiortc/peer.py --url ws://HOST:PORT/ws/ROOM --name NAME [--relay-only] [--timeout S]

stdin lines go to every peer on a `chat` data channel; received chat prints as `NAME: TEXT`;
`* ...` notices on stdout; logs on stderr. Exit 0 at stdin EOF, 2 at --timeout, 1 on a fatal error.
"""

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import threading

import websockets
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger("aiortc-peer")

# protocol.md, "Error codes" (the `client` column) and "Client rules".
FATAL = {"unsupported_version", "invalid_room_id", "invalid_name", "room_full", "unauthorized",
         "forbidden", "kicked", "room_closed"}
REJOIN = {"resume_failed", "replay_overflow", "slow_consumer"}
ACK_AFTER_FRAMES, ACK_DELAY = 16, 0.2     # "Client rules": acknowledge
POLITE_OFFER_DELAY = 1.5                  # "signal": who offers first (the JS client's rule)
OFFER_RESEND = 5.0                        # "Client rules": resend an offer
STATS_EVERY = 15.0                        # "Client rules": stats every
# README, "Data channels": chat comes on `chat`, or on `reliable` from the Rust SDK and `peer`.
CHAT_LABELS = {"chat", "reliable"}


class Fatal(Exception):
    pass


def notice(text):
    print("* " + text, flush=True)


def printable(text):
    """Escape control and invisible characters, so a message cannot pass for a notice."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def sdp_ufrag(sdp):
    return next((l.split(":", 1)[1].strip() for l in sdp.splitlines() if l.startswith("a=ice-ufrag:")), None)


def sdp_fingerprint(sdp):
    return next((l.split(":", 1)[1].strip() for l in sdp.splitlines() if l.startswith("a=fingerprint:")), None)


class Remote:
    """One other peer of the room and our one RTCPeerConnection to it."""

    def __init__(self, info):
        self.id, self.name, self.polite = info["id"], info.get("name"), info["polite"]
        self.pc = None
        self.channels = []           # open `chat` channels (ours and the remote's)
        self.early = []              # candidate signals that came before the remote description
        self.making_offer = False
        self.inbox = asyncio.Queue()  # signals from this peer, handled in order
        self.tasks = []

    @property
    def display(self):
        return self.name or self.id


class Peer:
    def __init__(self, args):
        self.args = args
        self.ws = None
        self.session = None          # the last welcome/resumed
        self.last_seq = 0
        self.unacked = 0
        self.ack_timer = None
        self.remotes = {}
        self.pending = []            # chat lines read while no channel was open (README, `peer join`)
        self.fatal = None
        self.leaving = False
        self.next_id = 0
        self.tasks = []

    # ---- signaling socket ----------------------------------------------------------------------

    def new_id(self):                  # "Transport": a request's `id`, echoed as `ref`
        self.next_id += 1
        return self.next_id

    async def send(self, frame):
        log.debug("send %s", frame)
        try:
            await self.ws.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            log.warning("frame %s not sent: socket down", frame.get("type"))  # unnumbered: lost

    async def connect(self):
        """Open a socket and `join` (no session) or `resume` ("Version handshake", "resume")."""
        self.ws = await asyncio.wait_for(websockets.connect(self.args.url, max_size=None), 10)
        if self.session:
            await self.send({"type": "resume", "id": self.new_id(), "versions": [1],
                             "resume_token": self.session["resume_token"], "last_seq": self.last_seq})
        else:
            await self.send({"type": "join", "id": self.new_id(), "versions": [1], "name": self.args.name})
        try:
            async with asyncio.timeout(10):
                async for raw in self.ws:
                    frame = json.loads(raw)
                    await self.on_frame(frame)
                    if frame["type"] in ("welcome", "resumed"):
                        return
        except websockets.ConnectionClosed:
            pass
        if self.fatal:
            raise Fatal(f"server error {self.fatal}")
        raise ConnectionError(f"socket closed before welcome ({self.ws.close_code})")

    async def signaling_loop(self):
        """Read frames; on a dropped socket reconnect with backoff ("Client rules": retry)."""
        while True:
            try:
                async for raw in self.ws:
                    await self.on_frame(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            if self.leaving:
                return
            if self.fatal:
                raise Fatal(f"server error {self.fatal}")
            log.warning("signaling socket closed (%s): reconnecting", self.ws.close_code)
            await self.reconnect()

    async def reconnect(self):
        delay = 0.25                   # "Client rules": 250 ms, doubling, at most 8 s, jitter [0.5, 1]
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1))
            try:
                return await self.connect()
            except Fatal:
                raise
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as e:
                log.warning("reconnect failed: %r", e)
                delay = min(delay * 2, 8)

    def schedule_ack(self):
        """"Client rules": ack after 16 unacknowledged frames or 200 ms after the first."""
        self.unacked += 1
        if self.unacked >= ACK_AFTER_FRAMES:
            self.spawn(self.ack())
        elif self.ack_timer is None:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, lambda: self.spawn(self.ack()))

    async def ack(self):
        if self.ack_timer:
            self.ack_timer.cancel()
        self.ack_timer, self.unacked = None, 0
        await self.send({"type": "ack", "seq": self.last_seq})

    async def ping_loop(self):
        """"Liveness": clients may send `ping`; one per ping interval keeps the socket busy."""
        while True:
            await asyncio.sleep((self.session or {}).get("ping_interval_ms", 10000) / 1000)
            if self.session:
                await self.send({"type": "ping", "id": self.new_id()})

    async def on_frame(self, f):
        log.debug("recv %s", f)
        seq = f.get("seq", 0)
        if seq:                        # "Sequence numbers": seq 0 belongs to no session
            if seq <= self.last_seq:
                return
            self.last_seq = seq
            self.schedule_ack()
        handler = getattr(self, "on_" + f["type"], None)
        if handler:
            await handler(f)
        else:
            log.info("ignored frame %s", f["type"])

    async def on_welcome(self, f):
        self.session = f
        notice(f"joined id={f['peer_id']}")
        for info in f["peers"]:
            self.add_remote(info)

    async def on_resumed(self, f):
        self.session = f
        log.warning("resumed, %d frames replayed", f.get("replayed", 0))
        for info in f["peers"]:
            if info["id"] not in self.remotes:
                self.add_remote(info)

    async def on_peer_joined(self, f):
        self.add_remote(f["peer"])

    async def on_peer_left(self, f):
        remote = self.remotes.pop(f["peer_id"], None)
        if remote:
            notice(f"peer-left id={remote.id}")
            await self.close_remote(remote)

    async def on_ice_servers(self, f):
        # "ice_servers": applied to connections made from now on (aiortc cannot restart ICE).
        self.session["ice_servers"] = f["ice_servers"]

    async def on_signal(self, f):
        remote = self.remotes.get(f["from"])
        if remote:
            remote.inbox.put_nowait(f["signal"])

    async def on_draining(self, f):
        # "draining": close after reconnect_after_ms, without `leave`, and resume (backoff as usual).
        ws = self.ws
        asyncio.get_running_loop().call_later(f["reconnect_after_ms"] / 1000, lambda: self.spawn(ws.close()))

    async def on_error(self, f):
        notice(f"error code={f['code']} message={f.get('message', '')}")
        if f["code"] in FATAL:
            self.fatal = f["code"]
        elif f["code"] in REJOIN:      # the session is gone: join again as a new peer
            self.session, self.last_seq = None, 0
            for remote in list(self.remotes.values()):
                await self.close_remote(remote)
            self.remotes.clear()

    # ---- peer connections ----------------------------------------------------------------------

    def add_remote(self, info):
        if info["id"] in self.remotes:
            return
        remote = self.remotes[info["id"]] = Remote(info)
        notice(f"peer-joined id={remote.id} name={remote.display}")
        self.new_pc(remote)
        remote.tasks.append(self.spawn(self.inbox_loop(remote)))
        # "signal", who offers first: the impolite side offers at once, the polite one waits 1.5 s.
        remote.tasks.append(self.spawn(self.first_offer(remote)))

    def new_pc(self, remote):
        # Always an explicit list: aiortc falls back to a public STUN server on iceServers=None.
        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                   for s in self.session["ice_servers"]]
        policy = RTCIceTransportPolicy.RELAY if self.args.relay_only else RTCIceTransportPolicy.ALL
        pc = remote.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        remote.channels, remote.early = [], []

        @pc.on("connectionstatechange")
        def on_state():
            if remote.pc is not pc:
                return
            notice(f"connection-state peer={remote.id} state={pc.connectionState}")
            if pc.connectionState == "connected":
                self.on_connected(remote, pc)

        @pc.on("datachannel")
        def on_channel(channel):
            self.watch_channel(remote, pc, channel)

        # README, "Data channels": each peer opens `chat` (reliable, ordered) and accepts the others.
        self.watch_channel(remote, pc, pc.createDataChannel("chat", ordered=True))
        return pc

    def watch_channel(self, remote, pc, channel):
        def opened():
            notice(f"channel-open peer={remote.id} label={channel.label}")
            if channel.label == "chat" and remote.pc is pc:
                remote.channels.append(channel)
                for line in self.pending:
                    channel.send(line)
                self.pending.clear()

        channel.on("open", opened)
        channel.on("close", lambda: channel in remote.channels and remote.channels.remove(channel))
        channel.on("message", lambda m: self.on_message(remote, channel, m))
        if channel.readyState == "open":  # a remote channel is open when aiortc announces it
            opened()

    def on_message(self, remote, channel, message):
        if channel.label not in CHAT_LABELS:
            return
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        print(f"{remote.display}: {printable(message)}", flush=True)

    def on_connected(self, remote, pc):
        dtls = pc.sctp.transport
        # Private aiortc field: the DTLS role fixed by the offer/answer (fine for a test tool).
        notice(f"dtls-role peer={remote.id} role={dtls._role}")
        pair = self.selected_pair(pc)
        if pair:
            notice(f"selected-pair peer={remote.id} local={pair.local_candidate.type} "
                   f"remote={pair.remote_candidate.type}")
        remote.tasks.append(self.spawn(self.stats_loop(remote, pc)))

    @staticmethod
    def selected_pair(pc):
        # aioice internals: the nominated pair of component 1.
        nominated = pc.sctp.transport.transport._connection._nominated
        return nominated.get(1) or next(iter(nominated.values()), None)

    async def stats_loop(self, remote, pc):
        """"stats": one report per connected peer, every 15 s while it stays connected."""
        while remote.pc is pc and pc.connectionState == "connected":
            pair = self.selected_pair(pc)
            transport = next((s for s in (await pc.getStats()).values() if s.type == "transport"), None)
            report = {"type": "stats", "peer": remote.id, "bytes_sent": getattr(transport, "bytesSent", 0),
                      "bytes_received": getattr(transport, "bytesReceived", 0)}
            if pair:
                report["pair"] = {"local": pair.local_candidate.type, "remote": pair.remote_candidate.type,
                                  "protocol": pair.local_candidate.transport.lower()}
            await self.send(report)
            await asyncio.sleep(STATS_EVERY)

    async def first_offer(self, remote):
        if remote.polite:
            await asyncio.sleep(POLITE_OFFER_DELAY)
            if remote.pc.signalingState != "stable" or remote.pc.remoteDescription:
                return                   # the other side offered meanwhile
        await self.offer(remote)

    async def offer(self, remote):
        pc = remote.pc
        remote.making_offer = True
        try:
            await pc.setLocalDescription(await pc.createOffer())   # aiortc gathers here: no trickle
        except Exception:
            if remote.pc is pc:
                raise
            return                       # replaced meanwhile (polite glare)
        finally:
            remote.making_offer = False
        while remote.pc is pc and pc.signalingState == "have-local-offer":
            await self.send({"type": "signal", "to": remote.id,
                             "signal": {"kind": "offer", "sdp": pc.localDescription.sdp}})
            await asyncio.sleep(OFFER_RESEND)  # "Client rules": resend an offer with no answer

    async def inbox_loop(self, remote):
        while True:
            signal = await remote.inbox.get()
            try:
                await self.on_peer_signal(remote, signal)
            except Exception:
                log.exception("signal %s from %s failed", signal.get("kind"), remote.id)

    async def on_peer_signal(self, remote, signal):
        kind, pc = signal["kind"], remote.pc
        if kind == "offer":
            if pc.remoteDescription is not None and \
                    sdp_fingerprint(signal["sdp"]) != sdp_fingerprint(pc.remoteDescription.sdp):
                # "signal", a new connection: the peer made a new RTCPeerConnection; so do we.
                log.warning("%s made a new connection: so do we", remote.id)
                old, pc = pc, self.new_pc(remote)
                await old.close()
            # Perfect negotiation ("welcome": `polite`).
            elif remote.making_offer or pc.signalingState != "stable":
                if not remote.polite:
                    log.warning("glare with %s: impolite, ignoring its offer", remote.id)
                    return
                # aiortc has no rollback: the polite side drops its offer with a fresh connection.
                log.warning("glare with %s: polite, replacing our offer", remote.id)
                old, pc = pc, self.new_pc(remote)
                await old.close()
            await pc.setRemoteDescription(RTCSessionDescription(signal["sdp"], "offer"))
            await self.apply_early(remote, pc)
            await pc.setLocalDescription(await pc.createAnswer())
            if remote.pc is pc:
                await self.send({"type": "signal", "to": remote.id,
                                 "signal": {"kind": "answer", "sdp": pc.localDescription.sdp}})
        elif kind == "answer":
            if pc.signalingState != "have-local-offer":
                log.info("answer from %s ignored in state %s", remote.id, pc.signalingState)
                return
            await pc.setRemoteDescription(RTCSessionDescription(signal["sdp"], "answer"))
            await self.apply_early(remote, pc)
        elif pc.remoteDescription is None:
            remote.early.append(signal)  # "signal": candidates may come before the description
        else:
            await self.add_candidate(pc, signal)

    async def apply_early(self, remote, pc):
        early, remote.early = remote.early, []
        for signal in early:
            await self.add_candidate(pc, signal)

    async def add_candidate(self, pc, signal):
        ufrag = sdp_ufrag(pc.remoteDescription.sdp)
        if signal["kind"] == "end_of_candidates":
            if signal.get("username_fragment") in (None, ufrag):
                await pc.addIceCandidate(None)
            return
        init = signal["candidate"]
        if init.get("usernameFragment") not in (None, ufrag):
            return                       # for an offer we ignored, or an older ICE generation
        line = init.get("candidate", "")
        if not line:                     # an empty candidate is end-of-candidates (browsers)
            return await pc.addIceCandidate(None)
        candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        candidate.sdpMid, candidate.sdpMLineIndex = init.get("sdpMid"), init.get("sdpMLineIndex")
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await pc.addIceCandidate(candidate)

    async def close_remote(self, remote):
        for task in remote.tasks:
            task.cancel()
        await remote.pc.close()

    # ---- chat and lifetime ---------------------------------------------------------------------

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks = [t for t in self.tasks if not t.done()] + [task]
        return task

    def send_line(self, line):
        sent = False
        for remote in self.remotes.values():
            if remote.channels:          # one copy per peer: both sides opened a `chat` channel
                if self.args.ignore_max_message_size and remote.pc.sctp:
                    remote.pc.sctp._remote_max_message_size = 0    # a misbehaving peer, for tests
                remote.channels[0].send(line)
                sent = True
        if not sent:
            self.pending.append(line)

    async def chat_from_stdin(self):
        lines = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def reader():                    # a daemon thread: works for pipes, FIFOs, files and ttys
            for raw in sys.stdin.buffer:
                loop.call_soon_threadsafe(lines.put_nowait, raw.decode("utf-8", "replace").rstrip("\r\n"))
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=reader, daemon=True).start()
        while (line := await lines.get()) is not None:
            self.send_line(line)
        while self.pending:              # EOF: what was read goes to the next peer that connects
            await asyncio.sleep(0.1)

    async def run(self):
        try:
            await self.connect()
        except (OSError, websockets.WebSocketException, ConnectionError, TimeoutError) as e:
            raise Fatal(f"cannot join: {e!r}")
        signaling = self.spawn(self.signaling_loop())
        self.spawn(self.ping_loop())
        chat = self.spawn(self.chat_from_stdin())
        await asyncio.wait({signaling, chat}, return_when=asyncio.FIRST_COMPLETED)
        if signaling.done():
            signaling.result()
            raise Fatal("signaling ended")
        await asyncio.sleep(0.5)         # linger: let the data channels flush
        self.leaving = True
        await self.send({"type": "leave"})
        try:                             # "leave": the server closes with 1000
            await asyncio.wait_for(signaling, 3)
        except TimeoutError:
            log.warning("no close within 3 s of leave")
        return 0

    async def shutdown(self):
        for task in self.tasks:
            task.cancel()
        if self.session and not self.leaving:    # timeout or fatal: still leave, best effort
            self.leaving = True
            await self.send({"type": "leave"})
        pcs = [r.pc.close() for r in self.remotes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*pcs, return_exceptions=True), 3)
            if self.ws:
                await asyncio.wait_for(self.ws.close(), 2)
        except Exception as e:
            log.warning("shutdown: %r", e)


async def main(args):
    peer = Peer(args)
    try:
        return await asyncio.wait_for(peer.run(), args.timeout)
    except TimeoutError:
        notice("timeout")
        return 2
    except Fatal as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        await peer.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/ws/ROOM")
    parser.add_argument("--name", required=True)
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logs on stderr")
    parser.add_argument("--ignore-max-message-size", action="store_true",
                        help="send lines longer than the peer's max-message-size (tests)")
    cli = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if cli.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    code = asyncio.run(main(cli))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)                       # the stdin thread may still be blocked in a read
