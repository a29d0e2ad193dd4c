#!/usr/bin/env python3
"""A second server for klingd's CPU figures: the part of Segmind's v2 API that
workload e uses (submit; status polls of jobs that never finish), written
independently of segmind-sim and with other writing habits, so that the CPU a
request costs klingd is not a property of one emulator:

  - the status line and headers go out in one write, the body in others: every
    write is its own TLS record and its own send(), never coalesced;
  - bodies are cut into small TLS records (--record-bytes, 64 by default) and
    status answers use chunked transfer encoding;
  - header names come in lower case, with a few headers segmind-sim never sends;
  - a connection is closed after --close-after answers (100 by default) with
    "connection: close", so klingd must reconnect (and do a TLS handshake) often.

    bench/second_server.py --tls-cert server.pem --tls-key server.key \
        --port-file port --api-key KEY [--close-after 100] [--record-bytes 64]

GET /sim/stats answers {"status": {"200": N}, "submit": {"200": M}} like segmind-sim's
statistics, for the benchmark's counts. Python's asyncio and ssl, nothing else.
"""
import argparse
import asyncio
import json
import ssl
import uuid


class Counts:
    def __init__(self):
        self.status = 0
        self.submit = 0
        self.connections = 0


async def read_request(reader):
    """(method, target, headers, body) or None at the end of the stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    n = int(headers.get("content-length", "0"))
    if n:
        body = await reader.readexactly(n)
    return method, target, headers, body


def pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


async def answer(writer, status, body_obj, chunked, close, record_bytes):
    body = json.dumps(body_obj, separators=(", ", ": ")).encode()
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}.get(status, "Other")
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json; charset=utf-8",
            "x-served-by: second-server", "cache-control: no-store"]
    head.append("transfer-encoding: chunked" if chunked else f"content-length: {len(body)}")
    if close:
        head.append("connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await writer.drain()
    for piece in pieces(body, record_bytes):
        if chunked:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        else:
            writer.write(piece)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def serve(args, counts):
    async def handle(reader, writer):
        counts.connections += 1
        served = 0
        try:
            while True:
                try:
                    method, target, headers, _ = await read_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError,
                        ssl.SSLError):
                    return
                served += 1
                close = served >= args.close_after or headers.get("connection", "").lower() == "close"
                path = target.split("?", 1)[0]
                if path == "/sim/stats":
                    await answer(writer, 200, {"status": {"200": counts.status}, "submit": {"200": counts.submit},
                                               "connections": counts.connections}, False, close, 1 << 20)
                elif headers.get("x-api-key") != args.api_key:
                    await answer(writer, 401, {"detail": "Invalid API key"}, False, close, args.record_bytes)
                elif method == "POST" and path.startswith("/v2/") and path.count("/") == 2:
                    counts.submit += 1
                    rid = str(uuid.uuid4())
                    base = f"{args.public_url}/v2/requests/{rid}"
                    await answer(writer, 200, {"request_id": rid, "status": "QUEUED", "status_url": base + "/status",
                                               "response_url": base}, False, close, args.record_bytes)
                elif method == "GET" and path.startswith("/v2/requests/") and path.endswith("/status"):
                    counts.status += 1
                    rid = path[len("/v2/requests/"):-len("/status")]
                    await answer(writer, 200, {"request_id": rid, "status": "PROCESSING"}, True, close,
                                 args.record_bytes)
                else:
                    await answer(writer, 404, {"detail": "Not found"}, False, close, args.record_bytes)
                if close:
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()
    return handle


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--close-after", type=int, default=100, help="answers per connection before closing it")
    ap.add_argument("--record-bytes", type=int, default=64, help="largest TLS record of a body")
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    counts = Counts()
    server = await asyncio.start_server(serve(args, counts), "127.0.0.1", 0, ssl=ctx, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    args.public_url = f"https://127.0.0.1:{port}"
    with open(args.port_file, "w") as f:
        f.write(str(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
