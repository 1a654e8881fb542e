"""The floor of the relay's stack: CPU per message of the parts every relayed copy needs, doing nothing else.

    .venv/bin/python tests/bench/floor.py [--messages 3000]

- RSA-2048: one signature as relay/signing makes it (cryptography, PKCS#1 v1.5 over a SHA-256 digest);
- inbound: aiosmtpd with the relay's SMTP subclass (policy/smtp) and a handler that answers 250 to
  DATA and keeps nothing, one process, under smtp-source at concurrency 10, one connection per
  message and with reuse;
- outbound: the relay's pipelining client (relay/pipelining) sending 4 KB copies over 10 reused
  connections into smtp-sink, one process.
Their sum is what a signed, relayed message costs before any spool, fsync, policy, store or log
line; `make bench` reports Postfix's CPU per message on the same machine to set it against.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import message  # noqa: E402
from harness import log  # noqa: E402
from measure import cpu_seconds, free_port, wait_port  # noqa: E402
from postfix import ensure_packages  # noqa: E402
from sink import Sink  # noqa: E402

CONCURRENCY = 10


def rsa_ms(count: int = 500) -> float:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    digest = b"\x5a" * 32
    start = time.process_time()
    for _ in range(count):
        key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return (time.process_time() - start) / count * 1000


async def serve(port: int) -> None:
    """The inbound half alone: accept every message and drop it."""
    from policy.smtp import Handler, SaferSMTP

    class Drop(Handler):
        async def handle_DATA(self, server, session, envelope) -> str:
            return "250 2.0.0 Ok"

    handler = Drop()
    await asyncio.get_running_loop().create_server(lambda: SaferSMTP(handler, hostname="floor.example"),
                                                   "127.0.0.1", port)
    await asyncio.Event().wait()


def inbound_ms(messages: int, reuse: bool, msg_file: Path) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_port(port, 30, server)
        before = cpu_seconds([server.pid])
        subprocess.run(["smtp-source", "-s", str(CONCURRENCY), "-m", str(messages), *(["-d"] if reuse else []),
                        "-F", str(msg_file), "-f", message.SENDER, "-t", message.RECIPIENT,
                        "-M", "source.example.com", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        return (cpu_seconds([server.pid]) - before) / messages * 1000
    finally:
        server.kill()
        server.wait()


async def send(port: int, messages: int) -> None:
    """The outbound half alone: pipelined transactions over reused connections."""
    from relay.pipelining import PipeliningSMTP

    body = message.build()

    async def connection(count: int) -> None:
        client = PipeliningSMTP(hostname="127.0.0.1", port=port, local_hostname="relay.example")
        await client.connect()
        for _ in range(count):
            await client.transaction("bounce+floor@websofttt.com", message.RECIPIENT, body, 30, 30)
        await client.quit()

    await asyncio.gather(*(connection(messages // CONCURRENCY) for _ in range(CONCURRENCY)))


def outbound_ms(messages: int, root: Path) -> float:
    sink = Sink(root, free_port())
    try:
        run = subprocess.run([sys.executable, __file__, "--send", str(sink.port), str(messages)], check=True,
                             capture_output=True, text=True)
        return float(run.stdout.split()[-1])
    finally:
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--send", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return asyncio.run(serve(args.serve))
    if args.send:
        port, messages = args.send
        asyncio.run(send(port, messages))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print((usage.ru_utime + usage.ru_stime) / messages * 1000)
        return
    ensure_packages(log)
    with tempfile.TemporaryDirectory(prefix="websofttt-floor-") as tmp:
        root = Path(tmp)
        msg_file = root / "message-lf.eml"
        message.write_for_smtp_source(message.build(), msg_file)
        rsa = rsa_ms()
        log(f"RSA-2048 signature: {rsa:.2f} ms")
        new, reuse = inbound_ms(args.messages, False, msg_file), inbound_ms(args.messages, True, msg_file)
        log(f"inbound, accept and drop (c{CONCURRENCY}): {new:.2f} ms CPU/msg one connection per message, "
            f"{reuse:.2f} ms with reuse")
        out = outbound_ms(args.messages, root)
        log(f"outbound, pipelined over {CONCURRENCY} reused connections: {out:.2f} ms CPU/msg")
        log(f"floor per signed, relayed message: {rsa + new + out:.2f} ms one connection per message, "
            f"{rsa + reuse + out:.2f} ms with reuse")


if __name__ == "__main__":
    main()
