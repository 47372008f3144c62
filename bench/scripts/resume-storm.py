#!/usr/bin/env python3
"""Resume storm: N users connected, a T-second outage of all their
connections while pushes are posted at R/s to random users, then every user
reconnects with `since` at once. Measures the time until every user has its
`resumed` frame, the CPU the node spent (its own, from /proc/PID/stat) and
the whole machine's (/proc/stat busy time), the pushes replayed, and checks
that every user got exactly the pushes posted to it during the outage.

Usage (a node must run; pass its PID for the server CPU figure):
  bench/scripts/resume-storm.py --ws 127.0.0.1:8080 --http 127.0.0.1:8081 \
      --api-key KEY --secret SECRET --pid PID [--users 15000] [--rate 2000] \
      [--outage-s 10] [--workers 3]

Needs python3-websockets (Debian). Users are spread over --workers processes
(each holds users/workers sockets: the open-file cap is per process), each
with its own range of 127.0.0.x source addresses.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time

import websockets

CONNECT_BATCH = 500  # connections opened concurrently per worker
RECV_TIMEOUT_S = 60


def token(secret, uid, ttl_s=3600):
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64(json.dumps({"sub": uid, "exp": int(time.time()) + ttl_s}).encode())
    signing = header + b"." + claims
    sig = b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return (signing + b"." + sig).decode()


async def open_all(ws, secret, uids, since_of, source):
    """Connects every uid (with since), returns {uid: (conn, resumed, replayed)}."""
    out = {}

    async def one(uid):
        since = since_of.get(uid, "")
        url = f"ws://{ws}/ws?token={token(secret, uid)}&since={since}"
        conn = await websockets.connect(
            url, max_size=None, ping_interval=None, open_timeout=60,
            local_addr=(source, 0), compression=None)
        replayed = []
        while True:
            msg = json.loads(await asyncio.wait_for(conn.recv(), RECV_TIMEOUT_S))
            if msg["type"] == "resumed":
                out[uid] = (conn, msg, replayed)
                return
            replayed.append(msg)

    for i in range(0, len(uids), CONNECT_BATCH):
        await asyncio.gather(*(one(u) for u in uids[i:i + CONNECT_BATCH]))
    return out


def worker(args, index, uids, to_parent, from_parent):
    source = f"127.0.{10 + index}.1"

    async def main():
        first = await open_all(args.ws, args.secret, uids, {}, source)
        since = {u: r[1]["pos"] for u, r in first.items()}
        for conn, _, _ in first.values():
            await conn.close()
        to_parent.put(("down", index))
        from_parent.get()  # the outage is over
        started = time.monotonic()
        back = await open_all(args.ws, args.secret, uids, since, source)
        elapsed = time.monotonic() - started
        got = {u: [m["id"] for m in r[2]] for u, r in back.items()}
        recovered = sum(1 for r in back.values() if r[1]["recovered"])
        for conn, _, _ in back.values():
            await conn.close()
        to_parent.put(("back", index, elapsed, got, recovered))

    asyncio.run(main())


def busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_jiffies(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def post_for(args, uids, seconds, posted):
    """Posts `rate` pushes a second to random users for `seconds` (spread
    over a few keep-alive connections); records id per uid."""
    host, port = args.http.split(":")
    conns = [http.client.HTTPConnection(host, int(port)) for _ in range(4)]
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    end = time.monotonic() + seconds
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    n = 0
    while time.monotonic() < end:
        uid = random.choice(uids)
        c = conns[n % len(conns)]
        c.request("POST", f"/v1/push/user/{uid}", json.dumps({"data": {"n": n}}), headers)
        r = c.getresponse()
        body = json.loads(r.read())
        if r.status == 202:
            posted.setdefault(uid, []).append(body["id"])
        n += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return n


def metric(args, name):
    host, port = args.http.split(":")
    c = http.client.HTTPConnection(host, int(port))
    c.request("GET", "/metrics")
    total = 0.0
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ws", required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--users", type=int, default=15000)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--outage-s", type=float, default=10)
    p.add_argument("--workers", type=int, default=3)
    args = p.parse_args()

    uids = [f"storm-{i}" for i in range(args.users)]
    parts = [uids[i::args.workers] for i in range(args.workers)]
    to_parent = mp.Queue()
    gates = [mp.Queue() for _ in parts]
    procs = [mp.Process(target=worker, args=(args, i, part, to_parent, gates[i]))
             for i, part in enumerate(parts)]
    for proc in procs:
        proc.start()
    for _ in procs:
        to_parent.get(timeout=600)
    print(f"{args.users} users connected and disconnected; outage of {args.outage_s} s at {args.rate}/s",
          flush=True)
    posted = {}
    count = post_for(args, uids, args.outage_s, posted)
    accepted = sum(len(v) for v in posted.values())
    replayed_before = metric(args, "corecast_replayed_pushes_total")
    machine0, server0 = busy_jiffies(), proc_jiffies(args.pid) if args.pid else 0
    started = time.monotonic()
    for gate in gates:
        gate.put("go")
    results = [to_parent.get(timeout=600) for _ in procs]
    wall = time.monotonic() - started
    machine1, server1 = busy_jiffies(), proc_jiffies(args.pid) if args.pid else 0
    for proc in procs:
        proc.join()
    hz = os.sysconf("SC_CLK_TCK")
    got = {}
    recovered = 0
    for _, _, _, g, rec in results:
        got.update(g)
        recovered += rec
    lost = dup = 0
    for uid in uids:
        want = posted.get(uid, [])
        have = got.get(uid, [])
        lost += len(set(want) - set(have))
        dup += len(have) - len(set(have))
    replayed = metric(args, "corecast_replayed_pushes_total") - replayed_before
    print(json.dumps({
        "users": args.users,
        "pushes_posted": count,
        "pushes_202": accepted,
        "all_resumed_s": round(max(r[2] for r in results), 3),
        "wall_s": round(wall, 3),
        "resumes_recovered": recovered,
        "replayed": int(replayed),
        "lost": lost,
        "duplicates": dup,
        "server_cpu_s": round((server1 - server0) / hz, 3) if args.pid else None,
        "machine_busy_cpu_s": round((machine1[0] - machine0[0]) / hz, 3),
    }, indent=1))
    return 0 if lost == 0 and dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
