"""Keyservers for the tests, on 127.0.0.1: Debian's `sks` (a real HKP server, built empty and
served by `sks db`), and a hostile HKP server in this process that answers every lookup with
what a test tells it to (huge, garbage, another key), optionally over TLS (HKPS)."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.registry_server import free_port


class SksServer:
    """`sks db` on 127.0.0.1:PORT over an empty database in a temporary directory. Debian's
    sks keeps its log, database and command socket below BASEDIR/var/{log,lib,run}/sks."""

    def __init__(self) -> None:
        if shutil.which("sks") is None:
            pytest.skip("`sks` is not installed (Debian package sks)")
        self.base = Path(tempfile.mkdtemp(prefix="sifbox-sks-"))
        for d in ("log", "lib", "run"):
            (self.base / "var" / d / "sks").mkdir(parents=True)
        build = subprocess.run(["sks", "build", "-basedir", str(self.base), "-n", "10", "-cache", "100"],
                               capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if build.returncode != 0:
            raise RuntimeError(f"sks build failed: {build.stderr}")
        self.proc: subprocess.Popen[bytes] | None = None
        for _attempt in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["sks", "db", "-basedir", str(self.base), "-hkp_address", "127.0.0.1", "-hkp_port", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            if self._ready():
                return
            self.stop()
        raise RuntimeError(f"sks db did not start: {self.log()}")

    @property
    def url(self) -> str:
        return f"hkp://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return (self.base / "var/log/sks/db.log").read_text()[-2000:]
        except OSError:
            return ""

    def _ready(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/pks/lookup?op=stats", timeout=2).read()
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


Answer = Callable[[str], tuple[int, bytes]]


class HostileServer:
    """An HKP(S) server answering each request with `answer(path_and_query)`."""

    def __init__(self, answer: Answer, *, tls: tuple[str, str] | None = None) -> None:
        self.answer = answer
        self.requests: list[str] = []
        self.authorization: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                outer.authorization.append(self.headers.get("Authorization") or "")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = outer.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            do_GET = do_POST = _reply

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM files in `directory`)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    crt, pem = directory / "ks.crt", directory / "ks.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    crt.chmod(0o644)
    return str(crt), str(pem)
