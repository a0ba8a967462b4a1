"""Which sites a producer run ingests (the ``sites`` param), and the plan a ``dry_run`` prints.

``sites`` is a list of site names, checked like the single ``site`` was (full match, length)
before anything is downloaded, or ``["all"]``: every site in the source's file list (archive.org's
``stackexchange_files.xml``), the one-archive-per-table ``stackoverflow.com`` included, meta
sites only with ``include_meta``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from stackexchange import url_policy
from stackexchange.ingest import Decision
from stackexchange.multipart import part_size_for
from stackexchange.source import MEMBERS, Dumps, SourceNotFound, human_bytes

log = logging.getLogger(__name__)

ALL = "all"
_SPLIT = re.compile(r"^(?P<site>.+)-(?P<table>[A-Z][A-Za-z]+)\.7z$")


def is_meta(site: str) -> bool:
    """``meta.stackexchange.com``, ``ai.meta.stackexchange.com``, ``meta.stackoverflow.com``."""
    return "meta" in site.split(".")


def listed_sites(names: list[str], include_meta: bool) -> list[str]:
    """The sites a file list names: ``{site}.7z``, or ``{site}-Posts.7z`` with ``-Users.7z``."""
    found: set[str] = set()
    split: dict[str, set[str]] = {}
    for name in names:
        if not name.endswith(".7z"):
            continue
        match = _SPLIT.match(name)
        if match:
            split.setdefault(match["site"], set()).add(match["table"])
        else:
            found.add(name.removesuffix(".7z"))
    tables = {member.removesuffix(".xml") for member in MEMBERS}
    found |= {site for site, have in split.items() if tables <= have}
    chosen = []
    for site in sorted(found):
        try:
            url_policy.check_site(site)
        except url_policy.InvalidSourceParam:
            log.warning("The file list names %r, which is not a site name; left out", site)
            continue
        if include_meta or not is_meta(site):
            chosen.append(site)
    return chosen


def choose(requested: object, dumps: Dumps, include_meta: bool) -> list[str]:
    """The sites to ingest, each checked, in order, without duplicates (``["all"]`` reads the
    file list of ``dumps``, which keeps it for the sites' checks)."""
    if isinstance(requested, str):
        requested = [requested]
    if not isinstance(requested, list) or not requested:
        raise url_policy.InvalidSourceParam(
            f'sites must be a non-empty list of site names, or ["all"], got {requested!a}'
        )
    if ALL in requested:
        if requested != [ALL]:
            raise url_policy.InvalidSourceParam(
                f'sites {requested!a}: "all" stands alone; list names, or give ["all"]'
            )
        listed = dumps.files
        if not listed:
            raise SourceNotFound(
                f'sites=["all"] needs the source\'s file list, and {dumps.base_url} has none '
                "(or STACKEXCHANGE_CHECKSUMS_URL=none): list the sites by name instead"
            )
        chosen = listed_sites(list(listed), include_meta)
        log.info("sites=all: %d site(s) in the file list (meta sites %s)", len(chosen),
                 "included" if include_meta else "left out")  # fmt: skip
        return chosen
    return list(dict.fromkeys(url_policy.check_site(site) for site in requested))


@dataclass(frozen=True)
class Estimate:
    """What one site's ingest needs, from the archives' sizes and the configured rates."""

    download_bytes: int
    disk_bytes: int
    memory_bytes: int
    seconds: float


# Expansion of a real dump (XML / 7z), to size the part buffers before the header is read.
TYPICAL_EXPANSION = 6
# The worker's own footprint beside its part buffers (interpreter, decoder, validator children).
BASE_MEMORY_BYTES = 100 << 20
# Local disk of an ingest at any dump size: the archive is read forward, never stored.
INGEST_DISK_BYTES = 64 << 20


def estimate(decision: Decision, bytes_per_second: float) -> Estimate:
    archives = [remote for remote, _ in decision.source.unique_archives()]
    size = sum(remote.size or 0 for remote in archives)
    biggest = max((remote.size or 0 for remote in archives), default=0)
    # Three part buffers per file being written (two uploading, one filling).
    buffers = 3 * part_size_for(biggest * TYPICAL_EXPANSION) * len(MEMBERS)
    return Estimate(size, INGEST_DISK_BYTES, BASE_MEMORY_BYTES + buffers, size / bytes_per_second)


def plan_lines(decisions: list[Decision], bytes_per_second: float) -> list[str]:
    """The dry run's table: per site its archives, sizes, what would happen; then totals."""
    lines = [f"Plan for {len(decisions)} site(s) at {human_bytes(bytes_per_second)}/s per ingest:"]
    needs = []
    for decision in decisions:
        archives = ", ".join(
            f"{remote.name} ({human_bytes(remote.size) if remote.size is not None else '?'})"
            for remote, _ in decision.source.unique_archives()
        )
        if decision.ingest:
            need = estimate(decision, bytes_per_second)
            needs.append(need)
            what = (
                f"INGEST: {decision.reason}; needs disk {human_bytes(need.disk_bytes)}, memory "
                f"{human_bytes(need.memory_bytes)}, about {need.seconds:.0f} s"
            )
        else:
            what = f"SKIP (unchanged): {decision.reason}"
        lines.append(f"  {decision.site}: {archives} -> {what}")
    lines.append(
        f"Total: {len(needs)} to ingest, {len(decisions) - len(needs)} unchanged; download "
        f"{human_bytes(sum(n.download_bytes for n in needs))}, about "
        f"{sum(n.seconds for n in needs):.0f} s of ingest in all; the largest site needs disk "
        f"{human_bytes(max((n.disk_bytes for n in needs), default=0))} and memory "
        f"{human_bytes(max((n.memory_bytes for n in needs), default=0))} per ingest pod"
    )
    return lines
