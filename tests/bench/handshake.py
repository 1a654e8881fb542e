"""What one server-side TLS handshake costs the relay's process: certificate key (EC P-256, the default
of `websofttt init`, or RSA-2048), event loop (uvloop or asyncio) and resumed sessions.

A server process accepts TLS connections on 127.0.0.1 with the relay's own context
(policy.keys.server_ssl_context), answers one line and closes; a client process opens N connections,
10 at a time, fresh or resuming the first session (TLS 1.3 tickets). The figure is the server
process's CPU per connection (user + system), so the client's own cost is not counted.

Usage: .venv/bin/python tests/bench/handshake.py [--connections N]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import ssl
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from measure import free_port, wait_port  # noqa: E402

CONCURRENCY = 10


def make_cert(directory: Path, kind: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{kind}.pem", directory / f"{kind}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def serve(cert: Path, key: Path, port: int) -> None:
    from policy.keys import server_ssl_context

    class Once(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.write(b"220 ok\r\n")
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.close()

    await asyncio.get_running_loop().create_server(Once, "127.0.0.1", port, ssl=server_ssl_context(cert, key))
    await asyncio.Event().wait()


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSession:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.recv(100)                 # the line, and with it the TLS 1.3 tickets
            tls.sendall(b"QUIT\r\n")
            return tls.session


def measure(cert: Path, key: Path, loop: str, resume: bool, connections: int) -> float:
    port = free_port()
    env = {**os.environ, "WEBSOFTTT_LOOP": loop}
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(cert), str(key), str(port)], env=env)
    try:
        wait_port(port, 15, server)
        context = ssl.create_default_context(cafile=str(cert))
        session = connect(port, context, None) if resume else None
        before = cpu(server.pid)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda _: connect(port, context, session), range(connections)))
        return (cpu(server.pid) - before) / connections * 1000
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from relay import eventloop
        cert, key, port = args.serve
        return eventloop.run(serve(Path(cert), Path(key), int(port)))
    with tempfile.TemporaryDirectory(prefix="websofttt-handshake-") as tmp:
        for kind in ("ec", "rsa"):
            cert, key = make_cert(Path(tmp), kind)
            for loop in ("uvloop", "asyncio"):
                for resume in (False, True):
                    ms = measure(cert, key, loop, resume, args.connections)
                    print(f"{'EC P-256' if kind == 'ec' else 'RSA-2048':9} {loop:8} "
                          f"{'resumed' if resume else 'fresh':8} {ms:6.3f} ms CPU per handshake", flush=True)


if __name__ == "__main__":
    main()
