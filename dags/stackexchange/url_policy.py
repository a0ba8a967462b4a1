"""Which ``site`` and ``source_base_url`` the producer accepts, and where it may connect.

Anyone who can trigger ``produce_data_asset`` chooses both params, so the task must not become a
way to read the worker's files or to reach, or scan, the cluster's internal network:

- ``source_base_url`` is ``http(s)://`` without credentials, query or fragment (the archive URL is
  built by appending ``/{site}.7z``), ASCII only. ``file://`` is accepted only for paths under
  ``STACKEXCHANGE_FILE_ROOT`` once ``..`` and symlinks are resolved; unset, ``file://`` is refused.
- Every HTTP request, and every redirect hop ``requests`` follows, is checked before a connection
  is made: loopback, private, shared (CGNAT), link-local, unspecified, multicast, reserved and
  cloud-metadata addresses, the same embedded in IPv6 (IPv4-mapped, 6to4, NAT64), and metadata
  host names are refused unless ``STACKEXCHANGE_ALLOWED_HOSTS`` lists them. A cloud metadata
  address (in any form) must be listed exactly: a range covering it, or a listed host name
  resolving to it, does not admit it. Host names are
  resolved and every answer must pass; IPv4 written in decimal, octal, hex or short form is read
  as the address it stands for.
- A refused destination is refused before any connection, so the error is the same whether or
  not something listens there; it names the URL (credentials and query hidden), the reason and
  the setting that changes it, and never the addresses a name resolved to.

Settings (read at each call): ``STACKEXCHANGE_ALLOWED_HOSTS``, comma-separated host names (exact
match), IP addresses or CIDRs exempt from the address rules (the local demo and the tests set
``127.0.0.1,localhost``); ``STACKEXCHANGE_FILE_ROOT``, the directory ``file://`` sources must be in.

DNS rebinding: a connection of ``guarded_session()`` resolves the host once, checks every answer
and connects to those checked addresses only (TLS still verifies the host name), so a name cannot
pass the check and then resolve elsewhere. Through an HTTP(S) proxy (``HTTPS_PROXY``) the proxy,
which the operator configured, resolves and connects; the destination is still checked here.

Public API: ``InvalidSourceParam``, ``check_site``, ``check_source_base_url``,
``check_destination``, ``guarded_session``, ``local_file``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

__all__ = [
    "InvalidSourceParam",
    "check_destination",
    "check_site",
    "check_source_base_url",
    "guarded_session",
    "local_file",
]

ALLOWED_HOSTS_ENV = "STACKEXCHANGE_ALLOWED_HOSTS"
FILE_ROOT_ENV = "STACKEXCHANGE_FILE_ROOT"
MAX_SITE_LENGTH = 253
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SITE = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_AUTHORITY = re.compile(r"(?P<host>\[[0-9a-f.]*:[0-9a-f:.]*\]|[^\[\]:]+)(?::(?P<port>[0-9]+))?")
# A last label that is a number makes the host an IPv4 address (WHATWG URL, inet_aton).
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 (CGNAT); not in ipaddress.is_private
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a public address)
    )
)
_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_ALLOW_FIX = (
    f"if it is your own mirror, add its host name, IP or CIDR to {ALLOWED_HOSTS_ENV} "
    "(comma-separated)"
)


class InvalidSourceParam(ValueError):
    """``site``/``source_base_url`` (or a URL they lead to) may not be fetched; retrying won't help.

    Also raised for a malformed ``STACKEXCHANGE_ALLOWED_HOSTS`` or ``STACKEXCHANGE_FILE_ROOT``.
    """


@dataclass(frozen=True)
class _AllowList:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def covers(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def lists_exactly(self, address: IPAddress) -> bool:
        """Whether ``address`` itself is listed (a single address, not a range covering it)."""
        return any(
            network.prefixlen == network.max_prefixlen and network.network_address == address
            for network in self.networks
        )


def _allow_list() -> _AllowList:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in os.environ.get(ALLOWED_HOSTS_ENV, "").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.rstrip(".")
        if not _HOST_NAME.fullmatch(name):
            raise InvalidSourceParam(
                f"{ALLOWED_HOSTS_ENV} entry {entry!a} is neither a host name, an IP address "
                "nor a CIDR; fix or remove it (e.g. 'mirror.example.com,10.0.0.0/24')"
            )
        names.add(name)
    return _AllowList(frozenset(names), tuple(networks))


def _shown(url: str) -> str:
    """``url`` fit for a message: credentials, query and fragment hidden, escaped, shortened."""
    text = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/]*@", r"\1***@", url)
    cut = re.search(r"[?#]", text)
    if cut:
        text = text[: cut.end()] + "***"
    if len(text) > 200:
        text = text[:200] + "..."
    return ascii(text)


def _refuse(what: str, url: str, reason: str, fix: str) -> InvalidSourceParam:
    return InvalidSourceParam(f"{what} {_shown(url)} is refused: {reason}; {fix}")


def check_site(site: object) -> str:
    """``site`` if it is a plausible Stack Exchange site name (lowercase DNS-like, ≤ 253)."""
    if (
        not isinstance(site, str)
        or len(site) > MAX_SITE_LENGTH
        or not _SITE.fullmatch(site)
        or ".." in site
    ):
        shown = ascii(site[:100] + "..." if isinstance(site, str) and len(site) > 100 else site)
        raise InvalidSourceParam(
            f"site {shown} is not a Stack Exchange site name: lowercase letters, digits, dots and "
            f"hyphens, at most {MAX_SITE_LENGTH} characters, like 'ai.meta.stackexchange.com' "
            "(the names are listed at https://archive.org/download/stackexchange)"
        )
    return site


def _check_url_text(what: str, url: object) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidSourceParam(f"{what} must be a non-empty string, got {url!a}")
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(what, url, f"it is longer than {MAX_URL_LENGTH} characters", "shorten it")
    if any(c <= " " or c >= "\x7f" or c == "\\" for c in url):
        raise _refuse(
            what,
            url,
            "it contains whitespace, a control, non-ASCII or backslash character",
            "percent-encode such characters in the path, and use the IDNA (xn--) form of a host",
        )
    return url


def _refuse_query_and_fragment(what: str, url: str) -> None:
    if "?" in url or "#" in url:
        raise _refuse(
            what,
            url,
            "it has a query or fragment ('?' or '#'), which would swallow the "
            "'/{site}.7z' appended to it",
            "pass the directory URL alone",
        )


def _split(what: str, url: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. unbalanced or misused brackets
        raise _refuse(what, url, f"it is malformed ({exc})", "fix the URL") from None


def _authority(what: str, url: str, scheme: str, netloc: str) -> tuple[str, int]:
    """Host (lowercase, IPv6 without brackets, no trailing dot) and port of ``netloc``."""
    if "@" in netloc:
        raise _refuse(
            what,
            url,
            "it carries credentials (user:password@)",
            "credentials in a URL end up in logs; use a mirror that needs none",
        )
    match = _AUTHORITY.fullmatch(netloc.lower())
    if match is None:
        raise _refuse(what, url, "its host[:port] is malformed", "write scheme://host[:port]/path")
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise _refuse(what, url, f"port {port} is outside 1..65535", "fix the port")
    return match["host"].strip("[]").rstrip("."), port


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as inet_aton does (``2130706433``, ``0177.1``, ``0x7f.0.0.1``), else None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if re.fullmatch(r"0x[0-9a-f]*", part):
            numbers.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]*", part):
            numbers.append(int(part, 8))
        elif re.fullmatch(r"[1-9][0-9]*", part):
            numbers.append(int(part))
        else:
            return None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _literal(what: str, url: str, host: str) -> IPAddress | None:
    """The address ``host`` spells, None for a host name; refuses what is neither."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        address = _legacy_ipv4(host)
        if address is None:
            raise _refuse(
                what, url, f"{host!a} is neither a host name nor an IPv4 address", "fix the host"
            )
        return address
    if not host or len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise _refuse(what, url, f"{host!a} is not a valid host name", "fix the host")
    return None


def _embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if 1 < int(address) <= 0xFFFFFFFF:  # ::a.b.c.d (deprecated, but still parsed)
        return ipaddress.IPv4Address(int(address)), "IPv4-compatible"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    return None


def _metadata_refusal(address: IPAddress, allowed: _AllowList) -> str | None:
    """Why ``address`` is refused as a cloud metadata address (in any form), or None.

    Listed exactly, it is allowed; a range in ``STACKEXCHANGE_ALLOWED_HOSTS`` (``fd00::/8``,
    ``::/0``) or a listed host name that resolves to it does not admit it.
    """
    embedded = _embedded_ipv4(address)
    for candidate, form in [(address, None), *([embedded] if embedded else [])]:
        if candidate in _METADATA_ADDRESSES:
            if allowed.lists_exactly(address) or allowed.lists_exactly(candidate):
                return None
            return "a cloud metadata address" + (f" in {form} form" if form else "")
    return None


def _refusal(address: IPAddress, allowed: _AllowList) -> str | None:
    """Why ``address`` may not be connected to (``a loopback address``), or None if it may."""
    metadata = _metadata_refusal(address, allowed)
    if metadata:
        return metadata
    if allowed.covers(address):
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner, form = embedded
        reason = _refusal(inner, allowed)
        return f"{reason} in {form} form" if reason else None
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address in _SHARED, "a shared (CGNAT) address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _check_host(what: str, url: str, host: str, allowed: _AllowList) -> IPAddress | None:
    """The rules that need no DNS; returns the literal address, or None for a host name."""
    address = _literal(what, url, host)
    if address is None:
        if host in _METADATA_NAMES and host not in allowed.names:
            raise _refuse(what, url, f"{host} is a cloud metadata host name", _ALLOW_FIX)
        return None
    reason = _refusal(address, allowed)
    if reason:
        legacy = isinstance(address, ipaddress.IPv4Address) and host != str(address)
        spelled = f"{host} ({address})" if legacy else host  # e.g. 0x7f.1 (127.0.0.1)
        raise _refuse(what, url, f"{spelled} is {reason}", _ALLOW_FIX)
    return address


def _checked_addresses(what: str, url: str, host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` stands for, each one allowed; ``socket.gaierror`` if unresolvable."""
    allowed = _allow_list()
    address = _check_host(what, url, host, allowed)
    if address is not None:
        return [address]
    answers = socket.getaddrinfo(
        host, port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM
    )
    addresses = list(dict.fromkeys(ipaddress.ip_address(a[4][0]) for a in answers))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    for address in addresses:
        # A listed name may resolve to private addresses (a mirror inside the cluster), never
        # to a metadata address that is not itself listed.
        if host in allowed.names:
            reason = _metadata_refusal(address, allowed)
        else:
            reason = _refusal(address, allowed)
        if reason:  # the address itself is not shown: it would map the internal network
            raise _refuse(what, url, f"{host} resolves to {reason}", _ALLOW_FIX)
    return addresses


def check_destination(url: str) -> None:
    """Refuse (``InvalidSourceParam``) a URL the producer may not connect to: one request or hop.

    Checks scheme, credentials, port and every address the host resolves to. A name that does not
    resolve raises ``requests.ConnectionError`` (a transient fault, retried like any other).
    """
    what = "the URL"
    _check_url_text(what, url)
    parts = _split(what, url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _refuse(
            what,
            url,
            f"scheme {scheme!a} is not http or https",
            "only http:// and https:// are fetched",
        )
    host, port = _authority(what, url, scheme, parts.netloc)
    try:
        _checked_addresses(what, url, host, port)
    except socket.gaierror as exc:
        raise requests.ConnectionError(f"cannot resolve the host of {_shown(url)}: {exc}") from exc


def _file_root() -> Path:
    raw = os.environ.get(FILE_ROOT_ENV, "").strip()
    if not raw:
        raise InvalidSourceParam(
            f"file:// sources are refused because {FILE_ROOT_ENV} is not set; set it to the "
            "directory that holds the dumps (only files under it are read), or use http(s)://"
        )
    root = Path(raw)
    if not root.is_absolute() or not root.resolve().is_dir():
        raise InvalidSourceParam(
            f"{FILE_ROOT_ENV}={raw!a} is not an absolute path to a directory; fix the setting"
        )
    return root.resolve()


def local_file(url: str) -> Path:
    """The path a ``file://`` URL names (``..`` and symlinks resolved), if it is under the root.

    Whether the path exists is not revealed: outside the root, existing or not, it is refused.
    """
    what = "the file URL"
    _check_url_text(what, url)
    _refuse_query_and_fragment(what, url)
    parts = _split(what, url)
    if parts.scheme.lower() != "file":
        raise _refuse(what, url, "it is not a file:// URL", "write file:///absolute/path")
    if parts.netloc not in ("", "localhost"):
        raise _refuse(what, url, "it names a host", "write file:///absolute/path (three slashes)")
    root = _file_root()
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_absolute() or any(c < " " or c == "\x7f" for c in str(path)):
        raise _refuse(
            what,
            url,
            "its path is not absolute or holds control characters",
            "write file:///absolute/path",
        )
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise _refuse(
            what,
            url,
            f"it is outside {FILE_ROOT_ENV} ({root}) once '..' and symlinks are resolved",
            f"put the dumps under {root}, or change {FILE_ROOT_ENV}",
        )
    return resolved


def check_source_base_url(url: object) -> str:
    """``url`` checked and normalised: lowercase scheme and host, no trailing slash.

    ``file://`` becomes the resolved path under ``STACKEXCHANGE_FILE_ROOT`` as a URI. Host names
    are resolved and checked when a request is made (``guarded_session``), not here.
    """
    what = "source_base_url"
    text = _check_url_text(what, url)
    _refuse_query_and_fragment(what, text)
    parts = _split(what, text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return local_file(text).as_uri()
    if scheme not in _DEFAULT_PORTS:
        raise _refuse(
            what,
            text,
            f"scheme {scheme!a} is not https, http or file",
            "use https:// (e.g. https://archive.org/download/stackexchange)",
        )
    host, _ = _authority(what, text, scheme, parts.netloc)
    _check_host(what, text, host, _allow_list())
    return urllib.parse.urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


class _CheckedConnection(HTTPConnection):
    """Resolves its host once, checks every answer, and connects only to those addresses."""

    def _new_conn(self) -> socket.socket:
        host = self.host.strip("[]").lower()
        scheme = "https" if isinstance(self, HTTPSConnection) else "http"
        netloc = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{netloc}:{self.port}/"
        try:
            addresses = _checked_addresses("the connection to", url, host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError = OSError(f"no address for {self.host}")
        for address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (str(address), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


class _CheckedHTTPSConnection(_CheckedConnection, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    """Checks each request's URL, redirect hops included, then connects through checked pools."""

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPPool,
            "https": _CheckedHTTPSPool,
        }

    def send(self, request: requests.PreparedRequest, *args: object, **kwargs: object):
        check_destination(request.url or "")
        return super().send(request, *args, **kwargs)


def guarded_session() -> requests.Session:
    """A ``requests.Session`` that checks every request and redirect hop before connecting.

    Any scheme goes to the guard, so a redirect to ``file://`` or ``ftp://`` is refused with the
    policy's message rather than requests' "no connection adapter".
    """
    session = requests.Session()
    # Bodies as they are: a compressed one could expand without bound before any size check
    # (responses that are compressed anyway are refused by ``source.check_status``).
    session.headers["Accept-Encoding"] = "identity"
    adapter = _GuardedAdapter()
    for prefix in ("https://", "http://", ""):
        session.mount(prefix, adapter)
    return session
