"""For the rotation tests: gateways run as `ocn-edge run` runs them (edge.service, reloads included), polled with deadlines;
a throwaway old and new CA with a cross-certificate; and a TLS front for the hub whose certificate chain can be changed."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.config import load_config
from edge.runtime import Gateway
from edge.service import run_gateway

__all__ = ["Authority", "TlsFront", "gateway_running", "until"]


async def until(check: Callable[[], bool], what: str, *, deadline_s: float = 30.0) -> None:
    """Poll ``check`` until it holds; a generous deadline that only a broken feature reaches (not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not check():
        if loop.time() > end:
            raise AssertionError(f"still not {what} after {deadline_s:g} s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def gateway_running(config_path: Path) -> AsyncIterator[list[Gateway]]:
    """The gateway of ``config_path`` running as `ocn-edge run` does; the list holds each pipeline it started, newest last."""
    stop = asyncio.Event()
    started: list[Gateway] = []
    task = asyncio.create_task(run_gateway(load_config(config_path), stop=stop, started=started.append))
    await until(lambda: bool(started) or task.done(), "started")
    if task.done():
        task.result()
    try:
        yield started
    finally:
        stop.set()
        await task


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


class Authority:
    """A CA (EC P-256); ``cross_sign`` makes another CA's certificate issued by this one, for the changeover."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(f"{name} test CA")
        self.cert = self._ca_cert(self.name, self.key.public_key(), self.name, self.key)

    @staticmethod
    def _ca_cert(subject: x509.Name, public: ec.EllipticCurvePublicKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256())
        )

    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def cross_sign(self, other: Authority) -> x509.Certificate:
        return self._ca_cert(other.name, other.key.public_key(), self.name, self.key)

    def server(self, folder: Path, name: str, *, chain: tuple[x509.Certificate, ...] = ()) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1 issued by this CA (with ``chain`` after it in the file) and its key."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name("hub.test")).issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *chain)))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path


class TlsFront:
    """TLS on 127.0.0.1 in front of a plain-HTTP hub, as a city's reverse proxy is; ``serve`` changes the certificate chain
    for the connections that follow."""

    def __init__(self, hub_url: str) -> None:
        host, port = hub_url.removeprefix("http://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.url = ""

    def serve(self, cert: Path, key: Path) -> None:
        self.context.load_cert_chain(cert, key)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self.context)
        self.url = f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*self._pipes)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with suppress(Exception):
                sink.close()
