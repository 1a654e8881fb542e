"""The floor of the relay's stack: CPU per message of the parts every relayed copy needs, doing nothing else.

    .venv/bin/python tests/bench/floor.py [--messages 3000]

- RSA-2048: one signature as relay/signing makes it (cryptography, PKCS#1 v1.5 over a SHA-256 digest);
- inbound: aiosmtpd with the relay's SMTP subclass (policy/smtp) and a handler that answers 250 to
  DATA and keeps nothing, one process, under smtp-source at concurrency 10, one connection per
  message and with reuse;
- outbound: the relay's pipelining client (relay/pipelining) sending 4 KB copies over 10 reused
  connections into smtp-sink, one process.
Their sum is what a signed, relayed message costs before any spool, fsync, policy, store or log
line; `make bench` runs the same measurement once (`measure`) and reports it next to Postfix's CPU per
message on the same machine.

The servers and clients run on the relay's own event loop, `relay.eventloop.run` (uvloop by default,
asyncio's loop with WEBSOFTTT_LOOP=asyncio), and the loop's name is printed with the figures.
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
from relay import eventloop  # noqa: E402
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
        run = subprocess.run([sys.executable, __file__, "--send", str(sink.port), str(messages)],
                             capture_output=True, text=True, timeout=120 + messages * 0.1)
        if run.returncode != 0:
            last = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
            raise RuntimeError(f"the relay's pipelining client failed: {last[0]}")
        return float(run.stdout.split()[-1])
    finally:
        sink.stop()


def measure(messages: int, say=log) -> dict:
    """The whole floor, in ms of CPU per message, with the name of the event loop it ran on."""
    ensure_packages(say)
    with tempfile.TemporaryDirectory(prefix="websofttt-floor-") as tmp:
        root = Path(tmp)
        msg_file = root / "message-lf.eml"
        message.write_for_smtp_source(message.build(), msg_file)
        loop = eventloop.name()
        rsa = rsa_ms()
        say(f"floor ({loop}): RSA-2048 signature: {rsa:.2f} ms")
        new, reuse = inbound_ms(messages, False, msg_file), inbound_ms(messages, True, msg_file)
        say(f"floor ({loop}): inbound, accept and drop (c{CONCURRENCY}): {new:.2f} ms CPU/msg one connection per "
            f"message, {reuse:.2f} ms with reuse")
        try:
            out = outbound_ms(messages, root)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            say(f"floor ({loop}): outbound FAILED: {e}")
            return {"loop": loop, "messages": messages, "rsa_sign_ms": round(rsa, 3), "inbound_new_ms": round(new, 3),
                    "inbound_reuse_ms": round(reuse, 3), "error": f"outbound: {e}"}
        say(f"floor ({loop}): outbound, pipelined over {CONCURRENCY} reused connections: {out:.2f} ms CPU/msg")
    result = {"loop": loop, "messages": messages, "rsa_sign_ms": round(rsa, 3), "inbound_new_ms": round(new, 3),
              "inbound_reuse_ms": round(reuse, 3), "outbound_ms": round(out, 3),
              "total_new_ms": round(rsa + new + out, 3), "total_reuse_ms": round(rsa + reuse + out, 3)}
    say(f"floor ({loop}) per signed, relayed message: {result['total_new_ms']:.2f} ms one connection per message, "
        f"{result['total_reuse_ms']:.2f} ms with reuse")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--send", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return eventloop.run(serve(args.serve))
    if args.send:
        port, messages = args.send
        eventloop.run(send(port, messages))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print((usage.ru_utime + usage.ru_stime) / messages * 1000)
        return
    measure(args.messages)


if __name__ == "__main__":
    main()
