"""Load generator for what smtp-source cannot do: STARTTLS + AUTH PLAIN, and a fixed-rate latency probe.

Run as its own process (`python loadgen.py ...`, prints one JSON object) so that its CPU is not
the harness's and its event loop is not slowed by the harness's sampling threads.

Two modes:
- throughput (default): `--concurrency` tasks send `--messages` messages as fast as they can, either
  one connection per message (connect, [STARTTLS, AUTH,] MAIL, RCPT, DATA, QUIT) or with `--reuse`
  one connection per task for all its messages.
- `--duration S`: the same as throughput, one connection per message or reused, but for S seconds
  whatever the server answers (the flood probe's tenant: a refusal is counted, the client waits 0.2 s
  as an application whose request failed would, and goes on); prints the monotonic time of each
  accepted message so that the caller can take the rate over any part of the run.
- `--rate R`: open loop, message i starts at t0 + i/R whatever happened before, on one of
  `--concurrency` connections opened beforehand (a message that finds none idle waits, counted as
  late). It records the time from the end of the DATA content (the "." line written) to the 250: the
  part of the reply time the server spends deciding and making the message durable, measured at a
  load the caller chooses (half the measured peak).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path

import aiosmtplib

MAX_ERRORS = 20


class Probe:
    """Remembers when the DATA content was handed to the transport (a write ending with CRLF.CRLF).

    The protocol's write is wrapped once per connection; each message only points the wrapper at
    its own probe (wrapping again per message would nest the wrappers on a reused connection).
    """

    def __init__(self) -> None:
        self.data_end = 0.0

    def hook(self, smtp: aiosmtplib.SMTP) -> None:
        proto = smtp.protocol
        if proto is None:
            return
        proto._bench_probe = self
        if getattr(proto, "_bench_hooked", False):
            return
        write = proto.write

        def timed_write(data: bytes) -> None:
            write(data)
            if data.endswith(b"\r\n.\r\n"):
                proto._bench_probe.data_end = time.perf_counter()
        proto.write = timed_write
        proto._bench_hooked = True


class Client:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.message = Path(args.message_file).read_bytes()
        self.password = Path(args.password_file).read_text().splitlines()[0] if args.password_file else None
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False        # the relay's self-signed certificate, on loopback
        self.tls.verify_mode = ssl.CERT_NONE
        self.errors: list[str] = []
        self.sent = 0
        self.connections = 0
        self.latencies: list[float] = []
        self.accepted_at: list[float] = []      # --duration: time.monotonic() of each 250 to DATA

    async def connect(self) -> aiosmtplib.SMTP:
        a = self.args
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=a.port, local_hostname="loadgen.example.com",
                               start_tls=True if a.starttls else False, tls_context=self.tls, timeout=120,
                               source_address=(a.source_address, 0) if a.source_address else None)
        await smtp.connect()
        if a.starttls:
            await smtp.ehlo()        # RFC 3207: the server forgot the pre-TLS EHLO; AUTH is offered only now
        if a.user:
            await smtp.auth_plain(a.user, self.password)
        self.connections += 1
        return smtp

    async def send(self, smtp: aiosmtplib.SMTP, probe: Probe | None = None) -> None:
        await smtp.mail(self.args.sender)
        await smtp.rcpt(self.args.recipient)
        if probe is not None:
            probe.hook(smtp)
        await smtp.data(self.message)
        if probe is not None:
            self.latencies.append(time.perf_counter() - probe.data_end)
        self.sent += 1
        if self.args.duration:
            self.accepted_at.append(time.monotonic())

    def failed(self, e: BaseException) -> None:
        if isinstance(e, aiosmtplib.SMTPResponseException):
            self.errors.append(f"{e.code} {e.message}")
        else:
            self.errors.append(f"{type(e).__name__}: {e}")
        if len(self.errors) >= MAX_ERRORS and not self.args.duration:
            raise RuntimeError("too many errors")

    # throughput mode
    async def worker(self, remaining: list[int]) -> None:
        smtp = None
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                if smtp is None:
                    smtp = await self.connect()
                await self.send(smtp)
                if not self.args.reuse:
                    await smtp.quit()
                    smtp = None
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as e:
                remaining[0] += 1
                self.failed(e)
                if smtp is not None:
                    smtp.close()
                smtp = None
        if smtp is not None:
            await smtp.quit()

    async def throughput(self) -> None:
        remaining = [self.args.messages]
        await asyncio.gather(*(self.worker(remaining) for _ in range(self.args.concurrency)))

    # fixed-duration mode
    async def timed_worker(self, deadline: float) -> None:
        smtp = None
        while time.monotonic() < deadline:
            try:
                if smtp is None:
                    smtp = await asyncio.wait_for(self.connect(), max(deadline - time.monotonic(), 0.1))
                await asyncio.wait_for(self.send(smtp), max(deadline - time.monotonic(), 0.1))
                if not self.args.reuse:
                    await smtp.quit()
                    smtp = None
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as e:
                if time.monotonic() >= deadline:
                    break                       # cut off by the end of the run: not an answer of the server
                self.failed(e)
                if smtp is not None:
                    smtp.close()
                smtp = None
                await asyncio.sleep(0.2)
        if smtp is not None:
            smtp.close()

    async def timed(self) -> None:
        deadline = time.monotonic() + self.args.duration
        await asyncio.gather(*(self.timed_worker(deadline) for _ in range(self.args.concurrency)))

    # fixed-rate mode
    async def paced(self) -> None:
        a = self.args
        # Connections are opened (and authenticated) before the clock starts: the probe measures
        # the reply to DATA at a steady rate, not a burst of TLS handshakes and scrypt checks.
        idle: list[aiosmtplib.SMTP] = list(await asyncio.gather(*(self.connect() for _ in range(a.concurrency))))
        slots = asyncio.Semaphore(a.concurrency)
        self.late = 0

        async def one() -> None:
            async with slots:
                smtp = idle.pop() if idle else None      # a slot guarantees one, unless a connection failed
                try:
                    if smtp is None:
                        smtp = await self.connect()
                    await self.send(smtp, Probe())
                    idle.append(smtp)
                except (TimeoutError, aiosmtplib.SMTPException, OSError) as e:
                    self.failed(e)
                    if smtp is not None:
                        smtp.close()

        tasks = []
        start = time.perf_counter()
        for i in range(a.messages):
            delay = start + i / a.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                self.late += 1
            if slots.locked():
                self.late += 1
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        for smtp in idle:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()


def run(main):
    """`main`'s result, on uvloop where installed, whatever loop the relay runs on: the client takes a share of
    the same two cores as the server, and the lighter it is, the less it disturbs what is measured."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--reuse", action="store_true", help="several messages per connection")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--user", help="AUTH PLAIN user (the password is read from --password-file)")
    p.add_argument("--password-file")
    p.add_argument("--rate", type=float, help="fixed rate in messages/s (latency mode)")
    p.add_argument("--duration", type=float, help="send for this many seconds whatever the answers (flood probe)")
    p.add_argument("--source-address", help="bind the client's sockets to this local address")
    p.add_argument("--message-file", required=True)
    p.add_argument("--sender", required=True)
    p.add_argument("--recipient", required=True)
    args = p.parse_args()
    client = Client(args)
    started = time.perf_counter()
    started_at = time.monotonic()
    status = 0
    try:
        run(client.paced() if args.rate else client.timed() if args.duration else client.throughput())
    except RuntimeError as e:
        status = 1
        client.errors.append(str(e))
    distinct: dict[str, int] = {}
    for error in client.errors:
        distinct[error] = distinct.get(error, 0) + 1
    result = {"sent": client.sent, "connections": client.connections,
              "seconds": round(time.perf_counter() - started, 3),
              "errors": [f"{n} x {text}" for text, n in distinct.items()]}
    if args.rate:
        result |= {"latencies_ms": [round(x * 1000, 3) for x in client.latencies], "late": client.late}
    if args.duration:
        result |= {"started": started_at, "accepted_at": [round(x, 4) for x in client.accepted_at],
                   "error_count": len(client.errors)}
        json.dump(result, sys.stdout)
        return status                  # refusals are what this mode measures, not a failure of the run
    json.dump(result, sys.stdout)
    return status if not client.errors else 1


if __name__ == "__main__":
    sys.exit(main())
