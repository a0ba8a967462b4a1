"""Generate Stack Exchange dumps in the real format, for tests, benchmarks and the local stack.

Real dumps (see the README of the shared reference dumps): every XML file starts with a UTF-8 BOM
and ``<?xml version="1.0" encoding="utf-8"?>``, uses CRLF, has no DOCTYPE, holds one ``<row/>``
per line under the root and ends with the closing root tag and no newline. Optional attributes
are left out when empty. Tags are ``<a><b>`` in older dumps and ``|a|b|`` in newer ones.

Usage: ``python -m local.sample_dump OUT.7z --posts 5000 --users 500 [--tag-style pipe]``
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from xml.sax.saxutils import quoteattr

import py7zr

BOM = "\ufeff"
HEADER = '<?xml version="1.0" encoding="utf-8"?>'
CRLF = "\r\n"
TAG_POOL = [
    "python", "apache-airflow", "kubernetes", "helm", "databricks", "apache-spark", "sql",
    "amazon-s3", "docker", "bash", "delta-lake", "pyspark", "git", "json", "xml", "c++",
    "discussion", "feature-request", "bug", "support",
]  # fmt: skip
WORDS = [
    "data", "pipeline", "asset", "spark", "lake", "table", "stream", "batch", "query", "schema",
    "job", "task", "run",
]  # fmt: skip
# The other files a real dump holds; generated small, so tests see an eight-file archive.
OTHER_FILES = ["Badges", "Comments", "PostHistory", "PostLinks", "Tags", "Votes"]


def _date(rng: random.Random) -> str:
    return (
        f"20{rng.randint(10, 24):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        f".{rng.randint(0, 999):03d}"
    )


def format_tags(tags: list[str], tag_style: str) -> str:
    """Tags as a dump stores them: ``<a><b>`` (angle) or ``|a|b|`` (pipe)."""
    if tag_style == "angle":
        return "".join(f"<{tag}>" for tag in tags)
    if tag_style == "pipe":
        return "|" + "|".join(tags) + "|"
    raise ValueError(f"tag_style must be 'angle' or 'pipe', not {tag_style!r}")


def _row(attributes: dict[str, object]) -> str:
    # quoteattr escapes CR/LF/TAB as character references, as the dumps do.
    parts = " ".join(f"{name}={quoteattr(str(value))}" for name, value in attributes.items())
    return f"  <row {parts} />"


def post_rows(
    n_posts: int, n_users: int, *, tag_style: str = "angle", seed: int = 0, body_words: int = 40
) -> Iterator[dict[str, object]]:
    """Posts: questions with tags, answers with ParentId, a few tag-wiki posts, some orphans."""
    rng = random.Random(seed)
    question_ids: list[int] = []
    post_id = 0
    for _ in range(n_posts):
        post_id += rng.randint(1, 3)  # ids ascend with gaps, as in real dumps
        kind = rng.random()
        row: dict[str, object] = {"Id": post_id}
        if kind < 0.45 or not question_ids:
            row["PostTypeId"] = 1
            question_ids.append(post_id)
        elif kind < 0.95:
            row["PostTypeId"] = 2
            row["ParentId"] = rng.choice(question_ids[-50:])
        else:
            row["PostTypeId"] = rng.choice([4, 5])
        row["CreationDate"] = _date(rng)
        row["Score"] = rng.randint(-3, 50)
        if row["PostTypeId"] == 1:
            row["ViewCount"] = rng.randint(1, 10_000)
        body = " ".join(rng.choices(WORDS, k=body_words))
        row["Body"] = f"<p>{body} & more</p>\n"
        owner = rng.random()
        if owner < 0.90:
            row["OwnerUserId"] = rng.randint(1, max(n_users - 2, 1))
        elif owner < 0.95:
            row["OwnerUserId"] = -1  # the Community user
        elif owner < 0.98:
            row["OwnerUserId"] = n_users + 1000 + rng.randint(0, 99)  # deleted user: orphan
        else:
            row["OwnerDisplayName"] = f"anonymous{rng.randint(1, 99)}"
        row["LastActivityDate"] = _date(rng)
        if row["PostTypeId"] == 1:
            row["Title"] = " ".join(rng.choices(WORDS, k=6)).capitalize() + "?"
            if rng.random() < 0.97:  # a few questions carry no tags at all
                row["Tags"] = format_tags(rng.sample(TAG_POOL, rng.randint(1, 5)), tag_style)
            row["AnswerCount"] = rng.randint(0, 5)
        row["CommentCount"] = rng.randint(0, 8)
        row["ContentLicense"] = rng.choice(["CC BY-SA 3.0", "CC BY-SA 4.0"])
        yield row


def user_rows(n_users: int, *, seed: int = 0) -> Iterator[dict[str, object]]:
    """Users: the Community user (Id -1) first, then ids 1..n_users-1 (some left out)."""
    rng = random.Random(seed + 1)
    yield {
        "Id": -1,
        "Reputation": 1,
        "CreationDate": _date(rng),
        "DisplayName": "Community",
        "LastAccessDate": _date(rng),
        "Location": "on the server farm",
        "AboutMe": "<p>Hi, I'm not really a person.</p>\r\n",
        "Views": 0,
        "UpVotes": 100,
        "DownVotes": 100,
        "AccountId": -1,
    }
    for user_id in range(1, n_users):
        row: dict[str, object] = {
            "Id": user_id,
            "Reputation": rng.randint(1, 50_000),
            "CreationDate": _date(rng),
            "DisplayName": f"user{user_id}",
            "LastAccessDate": _date(rng),
        }
        if rng.random() < 0.3:
            row["Location"] = rng.choice(["Berlin, Germany", "Lagos", "São Paulo", "Tokyo"])
        row.update(Views=rng.randint(0, 999), UpVotes=rng.randint(0, 99), DownVotes=0)
        row["AccountId"] = 1000 + user_id
        yield row


def write_xml(path: Path, root: str, rows: Iterator[dict[str, object]]) -> int:
    """Write rows as a dump file; returns the number of rows."""
    count = 0
    with path.open("w", encoding="utf-8", newline="", buffering=1 << 20) as out:
        out.write(f"{BOM}{HEADER}{CRLF}<{root}>{CRLF}")
        for row in rows:
            out.write(_row(row) + CRLF)
            count += 1
        out.write(f"</{root}>")
    return count


def write_site(
    directory: Path,
    *,
    posts: int,
    users: int,
    tag_style: str = "angle",
    seed: int = 0,
    body_words: int = 40,
    other_files: bool = True,
) -> list[Path]:
    """Write a site's XML files into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    write_xml(
        directory / "Posts.xml",
        "posts",
        post_rows(posts, users, tag_style=tag_style, seed=seed, body_words=body_words),
    )
    write_xml(directory / "Users.xml", "users", user_rows(users, seed=seed))
    paths = [directory / "Posts.xml", directory / "Users.xml"]
    if other_files:
        for name in OTHER_FILES:
            rows = ({"Id": i, "PostId": i} for i in range(1, 21))
            write_xml(directory / f"{name}.xml", name.lower(), rows)
            paths.append(directory / f"{name}.xml")
    return paths


# Rows rendered once for ``write_repeated_xml``: their text is a few MiB, far more than the
# LZMA2 dictionary of a fast preset (256 KiB for 7z -mx1), so the archive compresses like a real
# dump (Posts.xml ~5.7x) instead of finding each repeat.
POST_TEMPLATES = 8192
USER_TEMPLATES = 16384
_ID_MARK = "\x00"  # where a template row's Id goes (never in generated text)


def write_repeated_xml(path: Path, root: str, rows: Iterable[dict[str, object]], size: int) -> int:
    """Write a dump file of at least ``size`` bytes fast (seconds per GiB): each of ``rows`` is
    rendered once, then they repeat in turn with ascending Ids (1, 2, ...) until the file is that
    big. Returns the number of rows written. Every row must have an ``Id``."""
    templates = []
    for row in rows:
        prefix, suffix = _row({**row, "Id": _ID_MARK}).split(_ID_MARK)
        templates.append((prefix.encode(), (suffix + CRLF).encode()))
    if not templates:
        raise ValueError(f"write_repeated_xml needs at least one template row for {path.name}")
    count = 0
    with path.open("wb") as out:
        written = out.write(f"{BOM}{HEADER}{CRLF}<{root}>{CRLF}".encode())
        while written < size:
            batch = b"".join(
                b"%s%d%s" % (prefix, count + i + 1, suffix)
                for i, (prefix, suffix) in enumerate(templates)
            )
            written += out.write(batch)
            count += len(templates)
        out.write(f"</{root}>".encode())
    return count


def write_sized_site(directory: Path, *, posts_bytes: int, users_bytes: int) -> dict[Path, int]:
    """Write a site whose Posts.xml and Users.xml are at least these sizes (see
    ``write_repeated_xml``), with the other files small; returns each file's row count."""
    directory.mkdir(parents=True, exist_ok=True)
    posts, users = directory / "Posts.xml", directory / "Users.xml"
    rows = {
        posts: write_repeated_xml(
            posts, "posts", post_rows(POST_TEMPLATES, USER_TEMPLATES, body_words=150), posts_bytes
        ),
        users: write_repeated_xml(users, "users", user_rows(USER_TEMPLATES), users_bytes),
    }
    for name in OTHER_FILES:
        other = directory / f"{name}.xml"
        rows[other] = write_xml(other, name.lower(), ({"Id": i, "PostId": i} for i in range(1, 21)))
    return rows


# py7zr filter chains for pack_7z. LZMA2: as the official dumps are packed. STORED: the files as
# they are, so a flipped byte reaches the member's CRC check, not the decoder.
LZMA2 = [{"id": py7zr.FILTER_LZMA2, "preset": 1}]
STORED = [{"id": py7zr.FILTER_COPY}]


def pack_7z(
    files: list[Path],
    archive: Path,
    *,
    filters: list[dict] = LZMA2,
    password: str | None = None,
    seven_zip: str | None = None,
) -> Path:
    """Pack files at the archive root, in name order, as one solid folder, with py7zr's
    ``filters`` (LZMA2 by default, as the official dumps are packed). ``seven_zip`` (the path of
    the 7z tool, ``7zz`` or ``7z``) packs with it at ``-mx1`` instead: LZMA2, the same layout,
    ~3x faster (for dumps of GiBs)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    if seven_zip:
        if filters is not LZMA2 or password:
            raise ValueError("seven_zip packs LZMA2 only: leave filters and password to py7zr")
        archive.unlink(missing_ok=True)  # 7z would add to an existing archive
        # -ms=1t: solid with no size limit per block (7z's default limit at -mx1 would split a big
        # dump into several folders)
        command = [seven_zip, "a", "-t7z", "-m0=lzma2", "-mx=1", "-ms=1t", "-bd", "-bso0", "-bsp0"]
        subprocess.run([*command, str(archive), *map(str, sorted(files))], check=True)
        return archive
    with py7zr.SevenZipFile(archive, "w", filters=filters, password=password) as z:
        for path in sorted(files):
            z.write(path, arcname=path.name)
    return archive


def pack_split(
    files: list[Path], directory: Path, site: str, *, seven_zip: str | None = None
) -> list[Path]:
    """Pack each file alone into ``directory/{site}-{stem}.7z`` (e.g. ``…-Posts.7z`` holding
    ``Posts.xml`` at its root), the layout archive.org uses for stackoverflow.com."""
    return [pack_7z([f], directory / f"{site}-{f.stem}.7z", seven_zip=seven_zip) for f in files]


def build_dump(archive: Path, **site_options: object) -> Path:
    """Generate a site (options as for ``write_site``) and pack it into ``archive``."""
    workdir = Path(tempfile.mkdtemp(prefix="sample-dump-"))
    try:
        return pack_7z(write_site(workdir, **site_options), archive)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_file_list(item: Path) -> Path:
    """archive.org's ``{item}_files.xml`` for every ``.7z`` in ``item``, with each one's sha1."""
    entries = "".join(
        f'<file name="{archive.name}" source="original"><size>{archive.stat().st_size}</size>'
        f"<sha1>{hashlib.sha1(archive.read_bytes()).hexdigest()}</sha1></file>"
        for archive in sorted(item.glob("*.7z"))
    )
    listing = item / f"{item.name}_files.xml"
    listing.write_text(f"<files>{entries}</files>")
    return listing


def build_mirror(item: Path, sites: dict[str, dict[str, object]]) -> Path:
    """A mirror folder like archive.org's ``stackexchange`` item: ``{site}.7z`` per site (options
    as for ``write_site``) and the file list naming them; returns the file list."""
    for site, options in sites.items():
        build_dump(item / f"{site}.7z", **options)
    return write_file_list(item)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the .7z file to write")
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tag-style", choices=["angle", "pipe"], default="angle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_dump(
        args.archive, posts=args.posts, users=args.users, tag_style=args.tag_style, seed=args.seed
    )
    print(args.archive)


if __name__ == "__main__":
    main()
