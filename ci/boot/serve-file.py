#!/usr/bin/env python3
"""TEST-ONLY: answer one HTTP GET on stdin/stdout with the file named on the command line.

QEMU's slirp runs it per guest connection (guestfwd=...-cmd:), so a boot test can serve a
file to a guest whose network is restricted (restrict=on): the restore-mode boot fetches
its etcd snapshot from it.
"""
import sys

with open(sys.argv[1], "rb") as f:
    body = f.read()
# the request line and headers, up to the blank line (bounded)
for _ in range(100):
    line = sys.stdin.buffer.readline(8192)
    if line in (b"\r\n", b"\n", b""):
        break
head = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
sys.stdout.buffer.write(head + body)
sys.stdout.buffer.flush()
