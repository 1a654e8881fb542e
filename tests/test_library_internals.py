"""The private names of aiosmtpd and aiosmtplib that the project relies on, checked by name: an upgrade that
drops or renames one fails here, naming it and the module that uses it, not somewhere in a live session.
pyproject.toml bounds both libraries below their next major version for the same reason."""
from __future__ import annotations

import asyncio

import aiosmtplib
from aiosmtpd.smtp import SMTP
from aiosmtplib.protocol import SMTPProtocol

AIOSMTPD = {                        # on aiosmtpd.smtp.SMTP, class or instance
    "_getaddr": "policy/smtp.py (SaferSMTP's fast path for plain addresses)",
    "_tls_protocol": "policy/smtp.py (STARTTLS refused twice)",
    "_create_session": "relay/auth.py (the session without login_data)",
    "_authenticate": "relay/auth.py (AUTH checked by an async authenticator)",
    "_reader": "relay/auth.py (an AUTH answer beyond the line limit)",
    "_proxy_timeout": "inbound/server.py (per-address limits behind PROXY)",
}
AIOSMTPLIB = {                      # on aiosmtplib.SMTP, class or instance
    "_ehlo_or_helo_if_needed": "relay/pipelining.py",
}
AIOSMTPLIB_PROTOCOL = {             # on aiosmtplib.protocol.SMTPProtocol instances
    "_buffer": "relay/pipelining.py (replies read from the protocol's buffer)",
    "_command_lock": "relay/pipelining.py",
    "_read_response_from_buffer": "relay/pipelining.py",
}


def missing(obj: object, names: dict[str, str]) -> list[str]:
    return [f"{name} (used by {user})" for name, user in names.items() if not hasattr(obj, name)]


def test_aiosmtpd_still_has_the_private_names_the_relay_uses():
    async def build() -> SMTP:
        server = SMTP(object(), hostname="relay.example")
        server.connection_made(_Transport())
        return server
    server = asyncio.run(build())
    assert missing(server, AIOSMTPD) == []
    from aiosmtpd.smtp import MISSING, _Missing     # relay/auth.py: what challenge_auth returns on an aborted answer
    assert isinstance(MISSING, _Missing)


def test_aiosmtplib_still_has_the_private_names_the_courier_uses():
    assert missing(aiosmtplib.SMTP(hostname="127.0.0.1"), AIOSMTPLIB) == []

    async def build() -> SMTPProtocol:
        return SMTPProtocol()
    assert missing(asyncio.run(build()), AIOSMTPLIB_PROTOCOL) == []


class _Transport(asyncio.Transport):
    """Enough of a transport for a protocol to be connected to."""

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def write(self, data) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_cpython_ssl_still_gives_the_peer_chain_that_dane_matches():
    """relay/smtp_out.py reads the certificates a next hop sent through the private `_sslobj` of an SSLObject
    (`get_unverified_chain`, public only from Python 3.13) and CPython's `_ssl.ENCODING_DER`."""
    import _ssl
    import ssl
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="mx.example")
    assert hasattr(obj._sslobj, "get_unverified_chain") and hasattr(_ssl, "ENCODING_DER")
