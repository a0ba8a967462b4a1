"""Hostile ``site``/``source_base_url`` params: refused shapes, addresses, redirects, file roots.

No test connects anywhere but 127.0.0.1. Name resolution is outside our control, so it is
replaced by a table (``dns``); an address is only ever classified, and the ``connects`` fixture
records every socket connect and fails the test on any non-loopback destination.
"""

from __future__ import annotations

import copy
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest
import requests

from stackexchange.url_policy import (
    InvalidSourceParam,
    check_destination,
    check_site,
    check_source_base_url,
    guarded_session,
    local_file,
)

DAGS = Path(__file__).resolve().parents[1] / "dags"
ALLOWED, ROOT = "STACKEXCHANGE_ALLOWED_HOSTS", "STACKEXCHANGE_FILE_ROOT"
PUBLIC_V4, PUBLIC_V6 = "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


@pytest.fixture(autouse=True)
def no_policy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED, raising=False)
    monkeypatch.delenv(ROOT, raising=False)


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> addresses it resolves to. Unlisted names do not resolve (no real DNS);
    IP literals go to the real getaddrinfo, which parses them without any lookup."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, family: int = 0, type: int = 0, *rest: object):
        if host in table:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port, 0, 0) if ":" in a else (a, port),
                )
                for a in table[host]
            ]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(host, port, family, type, *rest)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (address, port) a socket connected to; a non-loopback one fails the test at once."""
    attempts: list[tuple[str, int]] = []
    real = socket.socket.connect

    def connect(sock: socket.socket, address: tuple) -> None:
        attempts.append((address[0], address[1]))
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"the test tried to connect to {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


class Server:
    """HTTP on 127.0.0.1: ``routes[path] = (status, headers, body)``; records (path, Host)."""

    def __init__(
        self,
        routes: dict[str, tuple[int, dict[str, str], bytes]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                server.seen.append((self.path, self.headers.get("Host", "")))
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        if tls is not None:
            self._http.socket = tls.wrap_socket(self._http.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.port = self._http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


def certificate_for(name: str, directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for ``name``, and the CA file to trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidSourceParam) as info:
        call()
    return str(info.value)


# --- site -------------------------------------------------------------------------------------

GOOD_SITES = ["ai.meta.stackexchange.com", "3dprinting.stackexchange.com", "a", "x" * 253]
BAD_SITES = {
    "trailing newline": "ai.stackexchange.com\n",
    "254 characters": "x" * 254,
    "uppercase": "AI.stackexchange.com",
    "double dot": "ai..stackexchange.com",
    "parent directory": "../etc/passwd",
    "slash": "ai.stackexchange.com/x",
    "leading dot": ".stackexchange.com",
    "trailing hyphen": "stackexchange-",
    "space": "ai stackexchange.com",
    "empty": "",
}


@pytest.mark.parametrize("site", GOOD_SITES, ids=lambda s: s[:30])
def test_check_site_accepts_site_names(site: str) -> None:
    assert check_site(site) == site


@pytest.mark.parametrize("site", BAD_SITES.values(), ids=BAD_SITES.keys())
def test_check_site_refuses(site: str) -> None:
    message = refusal(lambda: check_site(site))
    assert "is not a Stack Exchange site name" in message
    assert "ai.meta.stackexchange.com" in message  # the fix: what a name looks like
    assert len(message) < 600  # a long value is shortened, not echoed whole


def test_check_site_refuses_non_strings() -> None:
    assert "not a Stack Exchange site name" in refusal(lambda: check_site(["ai"]))


@pytest.fixture(scope="module")
def producer_params():
    """The producer DAG's ParamsDict, loaded the way the DAG processor loads the file."""
    from airflow.models.dagbag import DagBag

    bag = DagBag(str(DAGS / "produce_data_asset.py"), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["produce_data_asset"].params  # no DB: not get_dag()


def param_accepts(params, name: str, value: object) -> bool:
    """What Airflow does with a trigger's conf: the Param's JSON schema, Python's re.search."""
    from airflow.exceptions import ParamValidationError

    params = copy.deepcopy(params)
    try:
        params.update({name: value})
        params.validate()
    except ParamValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("site", "accepted"),
    [(s, True) for s in GOOD_SITES] + [(s, False) for s in BAD_SITES.values()],
    ids=[s[:30] for s in GOOD_SITES] + list(BAD_SITES),
)
def test_sites_param_agrees_with_check_site(producer_params, site: str, accepted: bool) -> None:
    assert param_accepts(producer_params, "sites", [site]) is accepted
    # one bad name refuses the whole list, before any download
    assert param_accepts(producer_params, "sites", [GOOD_SITES[0], site]) is accepted


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://archive.org/download/stackexchange", True),
        ("http://127.0.0.1:8000/dumps/", True),
        ("file:///srv/dumps", True),
        ("file:///etc/passwd#", False),
        ("https://archive.org/download/stackexchange?", False),
        ("https://archive.org/download/stackexchange#x", False),
        ("https://user:secret@archive.org/download", False),
        ("ftp://archive.org/download", False),
        ("https://archive.org/down load", False),
        ("https://archive.org/download\n", False),
        ("https://ex\u00e4mple.org/download", False),
        ("http://archive.org\\@127.0.0.1/", False),
        ("https://archive.org/" + "d" * 2040, False),
    ],
)
def test_source_base_url_param(producer_params, url: str, accepted: bool) -> None:
    assert param_accepts(producer_params, "source_base_url", url) is accepted


# --- source_base_url shapes -------------------------------------------------------------------

SHAPES = {
    "ftp": ("ftp://archive.org/download", "scheme 'ftp' is not https, http or file"),
    "gopher": ("gopher://archive.org/", "scheme 'gopher'"),
    "no scheme": ("archive.org/download", "scheme '' is not"),
    "file with fragment": ("file:///etc/passwd#", "query or fragment"),
    "empty query": ("https://archive.org/download?", "query or fragment"),
    "empty fragment": ("https://archive.org/download#", "query or fragment"),
    "userinfo": ("http://user:secret@archive.org/download", "credentials"),
    "user only": ("http://secret@archive.org/download", "credentials"),
    "port 0": ("http://archive.org:0/download", "port 0 is outside 1..65535"),
    "port 65536": ("http://archive.org:65536/download", "port 65536 is outside 1..65535"),
    "named port": ("http://archive.org:http/download", "malformed"),
    "empty port": ("http://archive.org:/download", "malformed"),
    "no host": ("http:///download", "malformed"),
    "bracketed IPv4": ("http://[1.2.3.4]/download", "malformed"),
    "non-ASCII host": ("https://ex\u00e4mple.org/download", "non-ASCII"),
    "space": ("https://archive.org/down load", "whitespace"),
    "trailing newline": ("https://archive.org/download\n", "whitespace"),
    "tab": ("https://archive.org/\tdownload", "whitespace"),
    "NUL": ("https://archive.org/\x00", "control"),
    "DEL": ("https://archive.org/\x7f", "control"),
    "backslash": ("http://archive.org\\@127.0.0.1/", "backslash"),
    "too long": ("https://archive.org/" + "d" * 2048, "longer than 2048"),
    "bad IPv4": ("http://1.2.3.4.5/download", "neither a host name nor an IPv4 address"),
    "octal 8": ("http://08.0.0.1/download", "neither a host name nor an IPv4 address"),
    "bad name": ("http://arch!ve.org/download", "not a valid host name"),
}


@pytest.mark.parametrize(("url", "reason"), SHAPES.values(), ids=SHAPES.keys())
def test_source_base_url_shape_refused(url: str, reason: str) -> None:
    message = refusal(lambda: check_source_base_url(url))
    assert message.startswith("source_base_url ")
    assert reason in message
    assert "secret" not in message  # credentials are never echoed
    assert "; " in message  # reason; fix


def test_source_base_url_refuses_non_strings() -> None:
    assert "non-empty string" in refusal(lambda: check_source_base_url(None))


def test_query_values_are_not_echoed() -> None:
    message = refusal(lambda: check_source_base_url("https://archive.org/d?token=hunter2"))
    assert "hunter2" not in message
    assert "'https://archive.org/d?***'" in message


def test_source_base_url_is_normalised() -> None:
    assert check_source_base_url("HTTPS://Archive.ORG:443/download/stackexchange/") == (
        "https://archive.org:443/download/stackexchange"
    )


def test_source_base_url_needs_no_dns() -> None:
    """Names are resolved per request (guarded_session); the param check works offline."""
    assert check_source_base_url("https://unresolvable.test/dumps") == (
        "https://unresolvable.test/dumps"
    )


# --- addresses --------------------------------------------------------------------------------

ADDRESSES = {
    "loopback": ("127.0.0.1", "a loopback address"),
    "loopback /8": ("127.53.1.1", "a loopback address"),
    "loopback v6": ("::1", "a loopback address"),
    "RFC 1918 10/8": ("10.1.2.3", "a private address"),
    "RFC 1918 172.16/12": ("172.16.5.4", "a private address"),
    "RFC 1918 192.168/16": ("192.168.1.1", "a private address"),
    "ULA": ("fd12:3456::1", "a private address"),
    "CGNAT": ("100.64.0.1", "a shared (CGNAT) address"),
    "link-local": ("169.254.10.10", "a link-local address"),
    "link-local v6": ("fe80::1", "a link-local address"),
    "unspecified": ("0.0.0.0", "the unspecified address"),
    "unspecified v6": ("::", "the unspecified address"),
    "multicast": ("224.0.0.251", "a multicast address"),
    "multicast v6": ("ff02::1", "a multicast address"),
    "reserved": ("240.0.0.1", "a reserved address"),
    "broadcast": ("255.255.255.255", "a reserved address"),
    "metadata AWS/GCP/Azure": ("169.254.169.254", "a cloud metadata address"),
    "metadata AWS v6": ("fd00:ec2::254", "a cloud metadata address"),
    "metadata ECS": ("169.254.170.2", "a cloud metadata address"),
    "metadata Alibaba": ("100.100.100.200", "a cloud metadata address"),
    "Azure wire server": ("168.63.129.16", "a cloud metadata address"),
    "IPv4-mapped private": ("::ffff:10.0.0.1", "a private address in IPv4-mapped form"),
    "6to4 loopback": ("2002:7f00:1::", "a loopback address in 6to4 form"),
    "NAT64 metadata": ("64:ff9b::a9fe:a9fe", "a cloud metadata address in NAT64 form"),
}


@pytest.mark.parametrize(("address", "reason"), ADDRESSES.values(), ids=ADDRESSES.keys())
def test_resolved_address_refused(dns: dict, address: str, reason: str) -> None:
    dns["mirror.test"] = [address]
    message = refusal(lambda: check_destination("https://mirror.test/dumps/x.7z"))
    assert f"'https://mirror.test/dumps/x.7z' is refused: mirror.test resolves to {reason};" in (
        message
    )
    assert "STACKEXCHANGE_ALLOWED_HOSTS" in message
    assert address not in message  # what an internal name resolves to is not revealed


@pytest.mark.parametrize(("address", "reason"), ADDRESSES.values(), ids=ADDRESSES.keys())
def test_literal_address_refused(address: str, reason: str) -> None:
    host = f"[{address}]" if ":" in address else address
    message = refusal(lambda: check_source_base_url(f"http://{host}/dumps"))
    assert f"{address} is {reason};" in message


def test_every_answer_must_pass(dns: dict) -> None:
    dns["mirror.test"] = [PUBLIC_V4, "10.0.0.1"]
    assert "resolves to a private address" in refusal(
        lambda: check_destination("https://mirror.test/")
    )


def test_public_answers_pass(dns: dict) -> None:
    dns["mirror.test"] = [PUBLIC_V4, PUBLIC_V6, f"64:ff9b::{PUBLIC_V4}", f"::ffff:{PUBLIC_V4}"]
    assert check_destination("https://mirror.test/dumps/x.7z?signature=abc") is None


def test_unresolvable_name_is_a_transient_connection_error() -> None:
    with pytest.raises(requests.ConnectionError, match="cannot resolve the host of"):
        check_destination("https://unresolvable.test/x.7z")


SPELLINGS = {
    "decimal": ("2130706433", "127.0.0.1"),
    "octal": ("017700000001", "127.0.0.1"),
    "hex": ("0x7f000001", "127.0.0.1"),
    "dotted octal": ("0177.0.0.1", "127.0.0.1"),
    "dotted hex": ("0x7f.0.0.1", "127.0.0.1"),
    "leading zeros": ("127.000.000.001", "127.0.0.1"),
    "short": ("127.1", "127.0.0.1"),
    "three parts": ("127.0.1", "127.0.0.1"),
    "mixed": ("0x7f.1", "127.0.0.1"),
    "trailing dot": ("127.0.0.1.", "127.0.0.1"),
    "metadata octal": ("0251.0376.0251.0376", "169.254.169.254"),
    "metadata decimal": ("2852039166", "169.254.169.254"),
}


@pytest.mark.parametrize(("host", "address"), SPELLINGS.values(), ids=SPELLINGS.keys())
def test_ipv4_spellings_do_not_bypass(host: str, address: str) -> None:
    """Read as the address they stand for, without DNS (the fake resolver knows no names)."""
    message = refusal(lambda: check_destination(f"http://{host}/x.7z"))
    assert f"({address}) is a " in message or f"{address} is a " in message


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.google.internal.", "metadata", "instance-data"]
)
def test_metadata_names_refused_without_resolving(host: str) -> None:
    assert "is a cloud metadata host name" in refusal(
        lambda: check_destination(f"http://{host}/computeMetadata/v1/")
    )


def test_redirect_hop_shapes_refused() -> None:
    assert "credentials" in refusal(lambda: check_destination("https://u:p@archive.org/x"))
    assert "scheme 'file' is not http or https" in refusal(
        lambda: check_destination("file:///etc/passwd")
    )


# --- allow-list -------------------------------------------------------------------------------


def test_allow_list_host_name(dns: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    dns["mirror.internal"] = ["10.0.0.5"]
    dns["other.internal"] = ["10.0.0.5"]
    monkeypatch.setenv(ALLOWED, " Mirror.Internal ,")
    assert check_destination("http://mirror.internal:8080/dumps") is None
    assert "resolves to a private address" in refusal(
        lambda: check_destination("http://other.internal:8080/dumps")
    )


def test_allow_list_ip(dns: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    dns["mirror.internal"] = ["10.0.0.5"]
    monkeypatch.setenv(ALLOWED, "10.0.0.5")
    assert check_destination("http://mirror.internal/dumps") is None
    assert check_destination("http://10.0.0.5/dumps") is None
    assert "10.0.0.6 is a private address" in refusal(
        lambda: check_destination("http://10.0.0.6/dumps")
    )


def test_allow_list_cidr(dns: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    dns["mirror.internal"] = ["10.0.0.5", "fd00:1::5"]
    monkeypatch.setenv(ALLOWED, "10.0.0.0/24,fd00:1::/64")
    assert check_destination("http://mirror.internal/dumps") is None
    assert check_source_base_url("http://10.0.0.200/dumps") == "http://10.0.0.200/dumps"
    assert "10.0.1.5 is a private address" in refusal(
        lambda: check_source_base_url("http://10.0.1.5/dumps")
    )


def test_allow_list_covers_the_embedded_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    assert check_destination("http://[::ffff:127.0.0.1]/") is None
    assert check_destination("http://2130706433/") is None


METADATA_FORMS = {
    "aws-ipv6": ("fd00:ec2::254", "a cloud metadata address"),
    "ipv4": ("169.254.169.254", "a cloud metadata address"),
    "ipv4-mapped": ("::ffff:169.254.169.254", "a cloud metadata address in IPv4-mapped form"),
    "ipv4-compatible": ("::169.254.169.254", "a cloud metadata address in IPv4-compatible form"),
}


@pytest.mark.parametrize(("address", "reason"), METADATA_FORMS.values(), ids=METADATA_FORMS.keys())
@pytest.mark.parametrize("covering", ["fd00::/8,169.254.0.0/16", "::/0,0.0.0.0/0"])
def test_a_covering_range_does_not_admit_metadata_addresses(
    monkeypatch: pytest.MonkeyPatch, address: str, reason: str, covering: str
) -> None:
    monkeypatch.setenv(ALLOWED, covering)
    assert f"is {reason}" in refusal(lambda: check_destination(f"http://[{address}]/"
                                                               if ":" in address else
                                                               f"http://{address}/"))  # fmt: skip


@pytest.mark.parametrize(("address", "reason"), METADATA_FORMS.values(), ids=METADATA_FORMS.keys())
def test_a_listed_name_does_not_admit_the_metadata_addresses_it_resolves_to(
    dns: dict, monkeypatch: pytest.MonkeyPatch, address: str, reason: str
) -> None:
    dns["mirror.internal"] = ["10.0.0.5", address]
    monkeypatch.setenv(ALLOWED, "mirror.internal,::/0")
    assert f"mirror.internal resolves to {reason}" in refusal(
        lambda: check_destination("http://mirror.internal/dumps")
    )


def test_a_metadata_address_listed_exactly_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED, "fd00:ec2::254,169.254.169.254")
    assert check_destination("http://[fd00:ec2::254]/") is None
    assert check_destination("http://169.254.169.254/") is None
    assert check_destination("http://[::ffff:169.254.169.254]/") is None


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "bad host!", "http://mirror/"])
def test_allow_list_bad_entry(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    monkeypatch.setenv(ALLOWED, f"localhost,{entry}")
    message = refusal(lambda: check_destination("http://127.0.0.1/"))
    assert f"STACKEXCHANGE_ALLOWED_HOSTS entry {entry!r} is neither" in message


# --- the guarded session: redirects, no oracle, no rebinding ----------------------------------


def test_redirect_to_metadata_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, connects: list
) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    target = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with Server({"/x.7z": (302, {"Location": target}, b"")}) as server:
        session = guarded_session()
        message = refusal(lambda: session.get(f"{server.url}/x.7z", timeout=10))
    assert f"'{target}' is refused: 169.254.169.254 is a cloud metadata address" in message
    assert connects == [("127.0.0.1", server.port)]  # the first hop only
    assert server.seen == [("/x.7z", f"127.0.0.1:{server.port}")]


def test_redirect_to_internal_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, dns: dict, connects: list
) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    dns["intranet.test"] = ["10.20.30.40"]
    with Server({"/x.7z": (301, {"Location": "http://intranet.test/admin"}, b"")}) as server:
        message = refusal(lambda: guarded_session().get(f"{server.url}/x.7z", timeout=10))
    assert "intranet.test resolves to a private address" in message
    assert connects == [("127.0.0.1", server.port)]


def test_redirect_to_file_is_refused(monkeypatch: pytest.MonkeyPatch, connects: list) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    with Server({"/x.7z": (302, {"Location": "file:///etc/passwd"}, b"")}) as server:
        message = refusal(lambda: guarded_session().get(f"{server.url}/x.7z", timeout=10))
    assert "scheme 'file' is not http or https" in message


def test_redirect_to_allowed_host_is_followed(
    monkeypatch: pytest.MonkeyPatch, dns: dict, connects: list
) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1,localhost")
    dns["localhost"] = ["127.0.0.1"]
    with Server({"/ok.7z": (200, {}, b"7z-bytes")}) as storage:
        location = f"http://localhost:{storage.port}/ok.7z"
        with Server({"/x.7z": (302, {"Location": location}, b"")}) as front:
            response = guarded_session().get(f"{front.url}/x.7z", timeout=10)
    assert response.status_code == 200
    assert response.content == b"7z-bytes"
    assert [r.status_code for r in response.history] == [302]
    assert storage.seen == [("/ok.7z", f"localhost:{storage.port}")]
    assert connects == [("127.0.0.1", front.port), ("127.0.0.1", storage.port)]


def test_open_and_closed_ports_fail_alike(connects: list) -> None:
    """Not allow-listed, 127.0.0.1 is refused before connecting: no port-scanner oracle."""
    closed = closed_port()
    with Server({"/": (200, {}, b"secret banner")}) as server:
        session = guarded_session()
        on_open = refusal(lambda: session.get(f"http://127.0.0.1:{server.port}/", timeout=10))
        on_closed = refusal(lambda: session.get(f"http://127.0.0.1:{closed}/", timeout=10))
    assert on_open.replace(str(server.port), "PORT") == on_closed.replace(str(closed), "PORT")
    assert "127.0.0.1 is a loopback address" in on_open
    assert connects == []
    assert server.seen == []


def test_connection_goes_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, dns: dict, connects: list
) -> None:
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    dns["mirror.test"] = ["127.0.0.1"]
    with Server({"/x.7z": (200, {}, b"data")}) as server:
        response = guarded_session().get(f"http://mirror.test:{server.port}/x.7z", timeout=10)
    assert response.content == b"data"
    assert server.seen == [("/x.7z", f"mirror.test:{server.port}")]  # Host is the name
    assert connects == [("127.0.0.1", server.port)]


def test_https_to_the_checked_address_verifies_the_name(
    monkeypatch: pytest.MonkeyPatch, dns: dict, connects: list, tmp_path: Path
) -> None:
    """Connecting to the checked IP keeps TLS on the name: SNI and certificate match it."""
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    dns["mirror.test"] = ["127.0.0.1"]
    tls, ca_file = certificate_for("mirror.test", tmp_path)
    with Server({"/x.7z": (200, {}, b"tls data")}, tls=tls) as server:
        session = guarded_session()
        response = session.get(
            f"https://mirror.test:{server.port}/x.7z", verify=ca_file, timeout=10
        )
        dns["other.test"] = ["127.0.0.1"]
        with pytest.raises(requests.exceptions.SSLError, match="not valid for 'other.test'"):
            session.get(f"https://other.test:{server.port}/x.7z", verify=ca_file, timeout=10)
    assert response.content == b"tls data"
    assert connects == [("127.0.0.1", server.port)] * 2


def test_allowed_but_closed_port_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch, connects: list
) -> None:
    """An allowed destination that is down fails as a connection error (retried), not refused."""
    monkeypatch.setenv(ALLOWED, "127.0.0.1")
    port = closed_port()
    with pytest.raises(requests.ConnectionError, match="Failed to establish a new connection"):
        guarded_session().get(f"http://127.0.0.1:{port}/x.7z", timeout=10)
    assert connects == [("127.0.0.1", port)]


def test_dns_rebinding_is_refused(monkeypatch: pytest.MonkeyPatch, connects: list) -> None:
    """The name passes the request check with a public answer, then resolves to loopback when
    the connection is made: the connection checks its own lookup and refuses."""
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])
    real = socket.getaddrinfo

    def rebinding(host: str, port: int, *rest: object):
        if host == "rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]
        return real(host, port, *rest)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with Server({"/x.7z": (200, {}, b"internal")}) as server:
        message = refusal(
            lambda: guarded_session().get(f"http://rebind.test:{server.port}/x.7z", timeout=10)
        )
    assert message.startswith(f"the connection to 'http://rebind.test:{server.port}/' is refused")
    assert "rebind.test resolves to a loopback address" in message
    assert connects == []
    assert server.seen == []


# --- file:// ----------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """STACKEXCHANGE_FILE_ROOT with one dump; a secret file and directory beside it."""
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "ai.stackexchange.com.7z").write_bytes(b"7z")
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ai.stackexchange.com.7z").write_bytes(b"other")
    monkeypatch.setenv(ROOT, str(dumps))
    return dumps


def test_file_refused_without_root() -> None:
    message = refusal(lambda: check_source_base_url("file:///srv/dumps"))
    assert "file:// sources are refused because STACKEXCHANGE_FILE_ROOT is not set" in message


def test_file_inside_root(root: Path) -> None:
    assert check_source_base_url(root.as_uri() + "/") == root.resolve().as_uri()
    path = local_file(f"{root.as_uri()}/ai.stackexchange.com.7z")
    assert path.read_bytes() == b"7z"


def test_file_outside_root(root: Path) -> None:
    message = refusal(lambda: local_file("file:///etc/passwd"))
    assert f"it is outside STACKEXCHANGE_FILE_ROOT ({root.resolve()})" in message


def test_file_dot_dot_escape(root: Path) -> None:
    for url in (f"{root.as_uri()}/../secret", f"{root.as_uri()}/%2e%2e/secret"):
        assert "outside STACKEXCHANGE_FILE_ROOT" in refusal(lambda url=url: local_file(url))


def test_file_symlink_escape(root: Path) -> None:
    (root / "link").symlink_to(root.parent / "outside", target_is_directory=True)
    message = refusal(lambda: check_source_base_url(f"{root.as_uri()}/link"))
    assert "outside STACKEXCHANGE_FILE_ROOT" in message


def test_file_symlink_inside_root_resolves(root: Path) -> None:
    (root / "alias.7z").symlink_to(root / "ai.stackexchange.com.7z")
    assert local_file(f"{root.as_uri()}/alias.7z") == (root / "ai.stackexchange.com.7z").resolve()


def test_file_existence_is_not_revealed(root: Path) -> None:
    existing = refusal(lambda: local_file(f"{root.as_uri()}/../secret"))
    missing = refusal(lambda: local_file(f"{root.as_uri()}/../nothing"))
    assert existing.replace("secret", "X") == missing.replace("nothing", "X")


def test_file_with_a_host_refused(root: Path) -> None:
    assert "it names a host" in refusal(lambda: local_file(f"file://fileserver{root}"))


def test_file_root_must_be_an_absolute_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT, "relative/dumps")
    message = refusal(lambda: local_file("file:///srv/dumps/x.7z"))
    assert "STACKEXCHANGE_FILE_ROOT='relative/dumps' is not an absolute path" in message
