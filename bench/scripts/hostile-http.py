#!/usr/bin/env python3
"""Issue 10 (items 5-8) attacks against any corecast binary, for before/after
figures: what each attack costs the node (RSS from /proc/PID/status) and
whether another user's push still goes through.

    bench/scripts/hostile-http.py BINARY ATTACK

ATTACK is one of: pollers, slow-upload, flood, batch, banner, close, scrape,
silent-handshakes, ping-flood.
Prints one JSON line. Stdlib only; starts its own node on loopback ports
(one core per node, settings through a TOML file so that older binaries,
which lack the newer environment variables, take them too). The regression
tests in tests/ (http_slots.rs, push_budget.rs, batch_uids.rs,
dev_banner.rs, close_codes.rs, metrics_cache.rs, handshake_slots.rs,
ping_flood.rs) are the pass/fail form of the same attacks.
"""

import base64
import hashlib
import hmac
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

SECRET = "bench-secret-0123456789"
KEY = "bench-key"
OTHER_KEY = "other-key"
ATTACKER = "127.0.0.2"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(uid, ttl=600):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": uid, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    def __init__(self, binary, toml="", env=None, secrets=True):
        self.ws, self.http = free_port(), free_port()
        cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        cfg.write(toml)
        cfg.close()
        e = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
        e.update(CORECAST_WS_LISTEN=f"127.0.0.1:{self.ws}",
                 CORECAST_HTTP_LISTEN=f"127.0.0.1:{self.http}", CORECAST_CORES="1")
        if secrets:
            e.update(CORECAST_JWT_SECRET=SECRET, CORECAST_API_KEYS=f"{KEY},{OTHER_KEY}")
        e.update(env or {})
        self.proc = subprocess.Popen([binary, "--config", cfg.name], env=e,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.stdout = ""
        for line in self.proc.stdout:
            self.stdout += line
            if line.startswith("corecast: ready"):
                break

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def cpu_s(self):
        """The node's CPU time so far (utime + stime), seconds."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def connect(port, source=None, timeout=10):
    s = socket.socket()
    if source:
        s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


_pending = {}


def read_answer(s):
    """One HTTP response as (status, head, body); None if the connection
    ends. Bytes past the response are kept for the next call (pipelining)."""
    buf = _pending.pop(s.fileno(), b"")
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.decode("latin-1").split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                return None
            rest += chunk
        if rest[length:]:
            _pending[s.fileno()] = rest[length:]
        return int(head[9:12]), head.decode("latin-1").lower(), rest[:length]
    except OSError:
        return None


def request(port, method, path, body=b"", key=KEY, source=None, conn=None):
    s = conn or connect(port, source)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    answer = read_answer(s)
    if conn is None:
        s.close()
    return answer


class Ws:
    """A minimal WebSocket client: upgrade, read frames, send masked frames."""

    def __init__(self, port, uid):
        self.s = connect(port)
        self.s.sendall((f"GET /ws?token={token(uid)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.s.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101"), buf
        self.buf = buf.split(b"\r\n\r\n", 1)[1]

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def frame(self):
        self._need(2)
        opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return opcode, payload

    def next_data(self, timeout=5):
        """The next text/binary payload or ('close', code); None on timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                opcode, payload = self.frame()
                if opcode in (1, 2):
                    return payload
                if opcode == 8:
                    return ("close", struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None)
        except (socket.timeout, EOFError, OSError):
            return None

    def send(self, opcode, payload):
        mask = b"\x01\x02\x03\x04"
        head = bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
        self.s.sendall(head + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def victim_gets_push(node, uid="victim", key=OTHER_KEY, source=None):
    """Whether another user's push (with another key, from another address) arrives."""
    ws = Ws(node.ws, uid)
    t0 = time.time()
    answer = request(node.http, "POST", f"/v1/push/user/{uid}", b'{"data":"through"}', key=key,
                     source=source)
    got = ws.next_data(5)
    ws.s.close()
    delivered = isinstance(got, bytes) and b"through" in got
    return {"status": answer[0] if answer else None, "delivered": delivered,
            "seconds": round(time.time() - t0, 3)}


def pollers(binary):
    """2,000 keep-alive connections from one address, each GET /healthz once
    (they would repeat every 50 s); then a caller from another address."""
    node = Node(binary)
    rss0 = node.rss_kib()
    conns = []
    for _ in range(2000):
        s = connect(node.http, ATTACKER)
        s.setblocking(False)
        s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(s)
    time.sleep(2)
    answered = refused = 0
    for s in conns:
        try:
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 200"):
                answered += 1
            elif data.startswith(b"HTTP/1.1 503"):
                refused += 1
        except BlockingIOError:
            pass
    rss1 = node.rss_kib()
    good = connect(node.http, "127.0.0.1", timeout=10)
    t0 = time.time()
    good.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_answer(good)
    served = round(time.time() - t0, 3) if answer else None
    result = {"attack": "pollers", "held_slots": answered, "refused_503": refused,
              "good_caller_served_after_s": served, "rss_kib": [rss0, rss1]}
    for s in conns:
        s.close()
    node.stop()
    return result


def slow_upload(binary):
    """A push body sent one byte per 250 ms with a 1 s idle timeout."""
    node = Node(binary, "[limits]\nhttp_idle_timeout_ms = 1000\n")
    ws = Ws(node.ws, "patient")
    body = b'{"data":"slow"}'
    s = connect(node.http)
    s.sendall((f"POST /v1/push/user/patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode())
    t0 = time.time()
    sent_all = True
    for b in body:
        time.sleep(0.25)
        try:
            s.send(bytes([b]))
        except OSError:
            sent_all = False
            break
    answer = read_answer(s)
    got = ws.next_data(2)
    node.stop()
    return {"attack": "slow-upload", "body_fully_sent": sent_all,
            "answer": answer[0] if answer else "reset/none",
            "after_s": round(time.time() - t0, 2), "delivered": bool(got and b"slow" in got)}


def flood(binary):
    """One key pushes 3,000 times as fast as one connection goes."""
    node = Node(binary, "", {"CORECAST_KEY_PUSHES_PER_SEC_MAX": "100"})
    rss0 = node.rss_kib()
    s = connect(node.http)
    counts = {}
    t0 = time.time()
    for _ in range(3000):
        answer = request(node.http, "POST", "/v1/push/user/nobody", b'{"data":"x"}', conn=s)
        if answer is None:
            s = connect(node.http)
            continue
        counts[answer[0]] = counts.get(answer[0], 0) + 1
    elapsed = round(time.time() - t0, 2)
    other = victim_gets_push(node)
    result = {"attack": "flood", "answers": counts, "seconds": elapsed,
              "other_key_push": other, "rss_kib": [rss0, node.rss_kib()]}
    node.stop()
    return result


def batch(binary):
    """One uid listed 10,000 times in one batch."""
    node = Node(binary)
    ws = Ws(node.ws, "v")
    rss0 = node.rss_kib()
    body = json.dumps({"uids": ["v"] * 10_000, "data": "once"}).encode()
    answer = request(node.http, "POST", "/v1/push/users", body)
    frames, closed = 0, None
    while True:
        got = ws.next_data(1)
        if got is None:
            break
        if isinstance(got, tuple):
            closed = got[1]
            break
        frames += 1
    result = {"attack": "batch", "answer": answer[0] if answer else None, "frames": frames,
              "closed_with": closed, "rss_kib": [rss0, node.rss_kib()]}
    node.stop()
    return result


def banner(binary):
    """Only CORECAST_JWT_SECRET set: is it (or a token signed with it) printed?"""
    node = Node(binary, "", {"CORECAST_JWT_SECRET": SECRET}, secrets=False)
    out = node.stdout
    node.stop()
    return {"attack": "banner", "secret_printed": SECRET in out, "token_printed": "eyJ" in out}


def close(binary):
    """Close frames with codes a peer may not send."""
    node = Node(binary)
    answers = {}
    for code in (0, 999, 1005, 1006, 1015, 2999, 5000, 1000, 4000):
        ws = Ws(node.ws, "closer")
        ws.send(8, struct.pack(">H", code) + b"bye")
        got = ws.next_data(3)
        answers[code] = got[1] if isinstance(got, tuple) else got
        ws.s.close()
    node.stop()
    return {"attack": "close", "server_close_code_for": answers}


def busy_seconds(node):
    """corecast_executor_busy_seconds_total per core, from a fresh scrape."""
    answer = request(node.http, "GET", "/metrics")
    busy = {}
    for line in answer[2].decode().splitlines():
        if line.startswith("corecast_executor_busy_seconds_total{"):
            name, value = line.rsplit(" ", 1)
            busy[name.split('"')[1]] = float(value)
    return busy


def scrape(binary):
    """2,000 pipelined GET /metrics on one connection, and a push meanwhile;
    busy seconds of each core over the storm."""
    node = Node(binary, "", {"CORECAST_CORES": "2"})
    rss0 = node.rss_kib()
    busy0 = busy_seconds(node)
    s = connect(node.http)
    t0 = time.time()
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
    other = victim_gets_push(node)
    n = 0
    while n < 2000 and read_answer(s):
        n += 1
    seconds = round(time.time() - t0, 2)
    time.sleep(1.1)
    busy1 = busy_seconds(node)
    result = {"attack": "scrape", "answered": n, "seconds": seconds,
              "busy_seconds_per_core": {c: round(busy1[c] - busy0.get(c, 0), 3) for c in busy1},
              "push_during_storm": other, "rss_kib": [rss0, node.rss_kib()]}
    node.stop()
    return result


def silent_handshakes(binary):
    """1,500 connections from one address to the WebSocket port that never
    send a byte; then a client from another address upgrades."""
    node = Node(binary)
    rss0, cpu0 = node.rss_kib(), node.cpu_s()
    silent = [connect(node.ws, ATTACKER) for _ in range(1500)]
    time.sleep(0.5)
    t0 = time.time()
    try:
        ws = Ws(node.ws, "honest")
        upgraded_after = round(time.time() - t0, 3)
        ws.s.close()
    except (OSError, AssertionError) as e:
        upgraded_after = f"failed: {e}"
    refused = 0
    for s in silent[-100:]:
        s.settimeout(0.5)
        try:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except OSError:
            pass
    rss1 = node.rss_kib()
    result = {"attack": "silent-handshakes", "honest_upgrade_after_s": upgraded_after,
              "last_100_answered_503": refused, "rss_kib": [rss0, rss1],
              "node_cpu_s": round(node.cpu_s() - cpu0, 3),
              "victim": victim_gets_push(node)}
    for s in silent:
        s.close()
    node.stop()
    return result


def ping_flood(binary):
    """One user with a 2 KiB receive buffer never reads and writes up to
    64 MiB of masked empty pings (20 s at most)."""
    node = Node(binary)
    rss0, cpu0 = node.rss_kib(), node.cpu_s()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.settimeout(10)
    s.connect(("127.0.0.1", node.ws))
    s.sendall((f"GET /ws?token={token('flooder')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    ping = bytes([0x89, 0x80, 1, 2, 3, 4])
    chunk = ping * 10_000
    s.settimeout(2)
    sent, t0 = 0, time.time()
    while sent < 64 * 1024 * 1024 and time.time() - t0 < 20:
        try:
            sent += s.send(chunk)
        except OSError:
            break
    rss1 = node.rss_kib()
    result = {"attack": "ping-flood", "written_kib": sent // 1024,
              "seconds": round(time.time() - t0, 1), "rss_kib": [rss0, rss1],
              "node_cpu_s": round(node.cpu_s() - cpu0, 3),
              "victim": victim_gets_push(node)}
    s.close()
    node.stop()
    return result


ATTACKS = {"silent-handshakes": silent_handshakes, "ping-flood": ping_flood,
           "pollers": pollers, "slow-upload": slow_upload, "flood": flood, "batch": batch,
           "banner": banner, "close": close, "scrape": scrape}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ATTACKS:
        sys.exit(f"usage: {sys.argv[0]} BINARY {{{','.join(ATTACKS)}}}")
    print(json.dumps(ATTACKS[sys.argv[2]](sys.argv[1])))
