#!/usr/bin/env python3
"""Measure the kernel memory one idle, established TCP socket costs.

Opens N loopback connections (2 N sockets: the client end and the accepted
server end; both are full TCP sockets), lets them sit idle, and reports the
growth of the kernel's slab memory (/proc/meminfo Slab) and of the per-socket
slab caches (/proc/slabinfo, readable by root only) divided by the number of
sockets.  Nothing is sent, so no socket holds a receive or send buffer: this is
the floor cost of an idle connection, which is what a push gateway holds a
million of.

Usage: python3 measure-socket-cost.py [N]      (default N = 10000)

The client ends live in a child process and the server ends in the parent, so
each process needs RLIMIT_NOFILE >= N + 16 only.

Run it on an otherwise quiet machine; other processes allocating slab memory
at the same time add noise.
"""

import gc
import os
import resource
import socket
import sys
import time

# Slab caches that grow by one object per established IPv4 TCP socket.
SOCKET_CACHES = ("TCP", "sock_inode_cache", "dentry", "filp")


def meminfo_kib(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def slab_bytes():
    """Bytes held by each cache of SOCKET_CACHES, or None if unreadable."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return None
    out = {}
    for line in lines:
        cols = line.split()
        if cols[0] in SOCKET_CACHES:
            out[cols[0]] = int(cols[2]) * int(cols[3])  # num_objs * objsize
    return out


def sockstat_tcp():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                return line.strip()
    return "?"


def snapshot():
    time.sleep(1.0)
    return meminfo_kib("Slab"), slab_bytes(), sockstat_tcp()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 16
    if soft < need:
        if hard < need:
            sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: lower N")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    addr = listener.getsockname()

    gc.collect()
    slab0, caches0, sock0 = snapshot()

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        # Client ends: connect N times, report, hold them until told to stop.
        os.close(ready_r)
        os.close(done_w)
        listener.close()
        held = [socket.create_connection(addr) for _ in range(n)]
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        for c in held:
            c.close()
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    held = [listener.accept()[0] for _ in range(n)]
    os.read(ready_r, 1)

    slab1, caches1, sock1 = snapshot()
    sockets = 2 * n
    print(f"connections: {n} (sockets: {sockets}, both ends)")
    print(f"sockstat before: {sock0}")
    print(f"sockstat after:  {sock1}")
    print(f"Slab growth: {slab1 - slab0} KiB = "
          f"{(slab1 - slab0) * 1024 / sockets:.0f} bytes per socket")
    if caches0 is not None and caches1 is not None:
        total = 0
        for name in SOCKET_CACHES:
            d = caches1.get(name, 0) - caches0.get(name, 0)
            total += d
            print(f"  {name:18} +{d / 1024:9.0f} KiB = {d / sockets:6.0f} bytes per socket")
        print(f"  {'sum':18} +{total / 1024:9.0f} KiB = {total / sockets:6.0f} bytes per socket")
    os.write(done_w, b"x")
    os.waitpid(child, 0)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
