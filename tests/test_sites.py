"""The dry run's plan (``sites.plan_lines``): each site's line, and totals over the sites to
ingest only."""

from __future__ import annotations

from stackexchange import sites
from stackexchange.ingest import Decision
from stackexchange.source import MEMBERS, RemoteArchive, Source, human_bytes

RATE = 1 << 20  # bytes per second


def _decision(site: str, ingest: bool, *sizes: int) -> Decision:
    """``site`` in one archive (one size) or one per table (two sizes)."""
    names = [f"{site}.7z"] if len(sizes) == 1 else [f"{site}-{m[:-4]}.7z" for m in MEMBERS]
    remotes = [
        RemoteArchive(f"https://x/{n}", size, None, None)
        for n, size in zip(names, sizes, strict=True)
    ]
    archives = dict(zip(MEMBERS, remotes * 2 if len(remotes) == 1 else remotes, strict=True))
    return Decision(site, ingest, "because", Source(site, archives), None)


def test_the_plan_totals_the_sites_to_ingest_and_leaves_out_the_unchanged() -> None:
    small = _decision("small.example", True, 3 << 20)
    split = _decision("split.example", True, 40 << 20, 8 << 20)
    unchanged = _decision("same.example", False, 500 << 20)
    lines = sites.plan_lines([small, unchanged, split], RATE)
    assert lines[0].startswith("Plan for 3 site(s)")
    need = {d.site: sites.estimate(d, RATE) for d in (small, split)}
    assert f"about {need['split.example'].seconds:.0f} s" in lines[3]
    assert lines[2].startswith("  same.example: same.example.7z (500.0 MiB) -> SKIP (unchanged)")
    total = lines[-1]
    assert total.startswith("Total: 2 to ingest, 1 unchanged; ")
    download = sum(n.download_bytes for n in need.values())
    assert f"download {human_bytes(download)}, about {download / RATE:.0f} s" in total
    assert f"memory {human_bytes(need['split.example'].memory_bytes)} per ingest pod" in total
