#!/usr/bin/env python3
"""Memory of the history per retained push: starts a release node, posts N
pushes with a 100-byte payload, each to a different (unconnected) user, and
reports the history's own count (corecast_history_bytes / _entries) and the
node's RSS growth per retained push (what the process really pays: entry,
frame, payload, indexes, allocator overhead).

Usage: bench/scripts/history-memory.py [N] (default 50000; needs
target/release/corecast: cargo build --release)
"""

import http.client
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAYLOAD_BYTES = 100
CONNECTIONS = 4


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def metric_sum(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    env = dict(os.environ, CORECAST_WS_LISTEN="127.0.0.1:0", CORECAST_HTTP_LISTEN="127.0.0.1:0",
               CORECAST_JWT_SECRET="history-memory", CORECAST_API_KEYS="hm-key",
               CORECAST_CORES="2", CORECAST_LIMITS_NODE_PUSHES_PER_SEC_MAX="0",
               CORECAST_LIMITS_KEY_PUSHES_PER_SEC_MAX="0")
    node = subprocess.Popen([os.path.join(ROOT, "target/release/corecast")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        http_port = None
        deadline = time.time() + 30
        while http_port is None and time.time() < deadline:
            line = node.stdout.readline()
            m = re.search(r"corecast: ready .* http=127\.0\.0\.1:(\d+)", line)
            if m:
                http_port = int(m.group(1))
        if http_port is None:
            sys.exit("node did not become ready")
        conns = [http.client.HTTPConnection("127.0.0.1", http_port) for _ in range(CONNECTIONS)]
        headers = {"Authorization": "Bearer hm-key", "Content-Type": "application/json"}
        # {"data":"<96 x's>"}: the payload kept is the JSON string, 98 bytes + quotes = 100.
        body = json.dumps({"data": "x" * (PAYLOAD_BYTES - 2)})

        def post(i):
            c = conns[i % CONNECTIONS]
            c.request("POST", f"/v1/push/user/hm-{i}", body, headers)
            r = c.getresponse()
            r.read()
            assert r.status == 202, r.status

        for i in range(1000):  # warm-up: tables and allocator arenas
            post(i)
        time.sleep(1.5)
        rss0 = rss_kib(node.pid)
        bytes0 = metric_sum(http_port, "corecast_history_bytes")
        entries0 = metric_sum(http_port, "corecast_history_entries")
        for i in range(1000, 1000 + n):
            post(i)
        time.sleep(1.5)
        rss1 = rss_kib(node.pid)
        bytes1 = metric_sum(http_port, "corecast_history_bytes")
        entries1 = metric_sum(http_port, "corecast_history_entries")
        entries = entries1 - entries0
        print(json.dumps({
            "pushes": n,
            "payload_bytes": PAYLOAD_BYTES,
            "entries_added": int(entries),
            "history_bytes_per_entry": round((bytes1 - bytes0) / entries, 1),
            "rss_bytes_per_entry": round((rss1 - rss0) * 1024 / entries, 1),
            "rss_kib": [rss0, rss1],
        }, indent=1))
    finally:
        node.terminate()
        node.wait(timeout=30)


if __name__ == "__main__":
    main()
