"""Benchmark the producer's streamed ingest against the machine's CPU floor and two baselines;
DAG parse time.

Generates dumps (``local.sample_dump.write_sized_site``: rows repeated from pre-rendered
templates, Users.xml 1/8 of Posts.xml, the six other members small, packed by the 7z tool at
``-mx1`` as one solid LZMA2 folder in the real member order; ~5.7x compression, as real dumps),
serves them with ``tests.http_fixtures.DumpServer`` and uploads to moto's S3 server, all on
127.0.0.1. Every measurement runs in its own subprocess. The cases: Posts.xml of ``--posts-gib``
GiB in one archive, the same split into ``{site}-Posts.7z`` + ``{site}-Users.7z``, and with
``--scale N`` (``make bench``: 4) a single archive N times larger. For each case it prints, in
seconds, wall time and the machine's CPU seconds during the run (``/proc/stat``: every process on
the machine, the servers and other users' load included), for:

- ingest: ``stackexchange.ingest.ingest`` as the DAG task calls it (imports not counted), and its
  floor: the machine's CPU seconds during that run over the cores (target: wall <= 1.05x it);
- naive baseline: ``curl`` the archive(s) to disk, ``7z x`` Posts.xml and Users.xml, boto3
  ``upload_file`` of both, one after the other (no check at all);
- same-guarantees baseline, in sequence: that, plus the project's validator on the extracted
  files, ``sha256sum`` of them and ``sha1sum`` of the archive(s) (target: ingest <= 0.75x it);
- each stage alone on the same data: download (``curl`` to /dev/null), decode (the standard
  library's decoder, ``stackexchange.sevenzip.FolderDecoder``, on the members' packed streams,
  output discarded), validate (the validator child, ``python -I dags/stackexchange/dump_xml.py
  NAME < NAME``), sha256 (hashlib over the members) and upload (``upload_file``);
- what a cheaper validation would buy: the validator's share of the ingest's machine CPU, and
  the floor, and the ratio to the naive baseline, the ingest would have without it;
- peak RSS above a bare interpreter that imported the same modules, sampled with psutil every
  50 ms: the worker process, its validator children, the two together (target <= 256 MiB,
  growing < 10% from the first case to the ``--scale`` one);
- peak local disk under the worker's TMPDIR, next to the archive size (target <= 64 MiB at any
  size: the archive is never written);
- first case only, the source paced at 80% of the rate the ingest processed it: the ingest
  against ``curl`` of the same archive at that rate (target <= 1.1x).

Then each DAG file's parse time against a trivial DAG file (target <= 1.2), the producer's also
against a DAG with the same Airflow features and none of our code, warm and in a fresh
interpreter. Wall times depend on the machine's other load: the load average is printed.

Usage: ``python -m benchmarks.ingest [--posts-gib 1] [--scale 4] [--quick] [--workdir DIR]``
(``--quick``: ~50 MiB cases, a smoke run). Needs ``curl``, ``sha256sum`` and the 7z tool (``make
bench`` installs Debian's ``7zip`` when run as root); scratch space about 3x the largest
Posts.xml.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from local.sample_dump import pack_7z, pack_split, write_sized_site
from local.services import DUMMY_AWS_ENV, LOCAL_SOURCE_ENV, MotoS3, aws_conn, s3_client
from local.stack import StackError
from local.stack.prerequisites import ensure_seven_zip
from stackexchange.settings import Limits

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DUMP_XML = DAGS / "stackexchange" / "dump_xml.py"
SITE = "bench.stackexchange.com"
BUCKET = "bench"
MEMBERS = ("Posts.xml", "Users.xml")
MIB, GIB = 1 << 20, 1 << 30
QUICK_POSTS_BYTES = 50 * MIB
PACED_SHARE = 0.8  # the paced source's rate, as a share of the rate the ingest processed
SAMPLE_SECONDS = 0.05
CORES = len(os.sched_getaffinity(0))


TRIVIAL_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag, task


    @dag(schedule=None, start_date=datetime(2025, 1, 1), catchup=False)
    def trivial():
        @task
        def hello():
            return 1

        hello()


    trivial()
    """
)

# The producer's Airflow features (a @daily cron schedule, three typed Params, default_args, two
# tasks) without any of our code: what Airflow itself spends building such a DAG.
PRODUCER_FEATURES_DAG = textwrap.dedent(
    """
    from datetime import datetime, timedelta

    from airflow.sdk import Param, dag, task


    @dag(
        schedule="@daily",
        start_date=datetime(2025, 1, 1),
        catchup=False,
        default_args={"owner": "o", "retries": 3, "retry_delay": timedelta(minutes=1),
                      "retry_exponential_backoff": True, "max_retry_delay": timedelta(minutes=30)},
        params={
            "a": Param("x", type="string", pattern=r"^[a-z0-9][a-z0-9.-]*$"),
            "b": Param("https://x", type="string", pattern=r"^(https?|file)://"),
            "c": Param(False, type="boolean"),
        },
    )
    def features():
        @task.short_circuit
        def check():
            return True

        @task
        def work():
            return 1

        check() >> work()


    features()
    """
)
REFERENCES = {"produce_data_asset.py": "producer_features_dag.py"}


def validator(member: str) -> list[str]:
    """The validator child's command line, with the row bound the ingest passes by default."""
    return [sys.executable, "-I", str(DUMP_XML), member, str(Limits.max_row_bytes)]


def worker_env(home: Path, s3_url: str | None = None) -> dict[str, str]:
    """A worker's environment: our code importable, a throwaway Airflow home, ``aws_conn`` at
    moto, and the producer allowed to read from 127.0.0.1."""
    env = {
        **os.environ,
        **DUMMY_AWS_ENV,
        **LOCAL_SOURCE_ENV,
        "PYTHONPATH": f"{DAGS}:{REPO}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "STACKEXCHANGE_BUCKET": BUCKET,
        "STACKEXCHANGE_CHECKSUMS_URL": "none",
    }
    if s3_url:
        env["AIRFLOW_CONN_AWS_CONN"] = aws_conn(s3_url)
    return env


def mib(count: float) -> str:
    return f"{count / MIB:,.0f} MiB"


def size_label(count: int) -> str:
    return f"{count / GIB:g} GiB" if count >= GIB else f"{count / MIB:g} MiB"


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used so far (``/proc/stat``: user, nice,
    system, irq, softirq, steal; not idle or iowait)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def allocated_bytes(directory: Path) -> int:
    """Disk space the files under ``directory`` take (blocks, not apparent sizes)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # deleted while we walk
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


# ---------------------------------------------------------------------------- the dumps


@dataclass(frozen=True)
class Dump:
    """One layout of a generated site, served from ``root`` under ``/stackexchange/``."""

    name: str
    root: Path
    archives: dict[str, list[str]]  # archive file name -> the members we take from it
    rows: dict[str, int]  # member -> rows
    sizes: dict[str, int]  # member -> bytes
    archive_bytes: int  # all archives together

    @property
    def served(self) -> Path:
        return self.root / "stackexchange"


def generate(workdir: Path, posts_bytes: int, layouts: list[str], tool: str) -> list[Dump]:
    """One site, packed in each of ``layouts`` (``single``: ``{site}.7z`` with all eight
    members; ``split``: ``{site}-Posts.7z`` and ``{site}-Users.7z``)."""
    started = time.monotonic()
    label = size_label(posts_bytes)
    xml = workdir / f"xml-{label.replace(' ', '')}"
    rows = write_sized_site(xml, posts_bytes=posts_bytes, users_bytes=posts_bytes // 8)
    targets = [xml / member for member in MEMBERS]
    dumps = []
    for layout in layouts:
        root = workdir / f"mirror-{layout}-{label.replace(' ', '')}"
        if layout == "single":
            archive = pack_7z(list(rows), root / "stackexchange" / f"{SITE}.7z", seven_zip=tool)
            archives = {archive.name: list(MEMBERS)}
        else:
            split = pack_split(targets, root / "stackexchange", SITE, seven_zip=tool)
            archives = {path.name: [member] for path, member in zip(split, MEMBERS, strict=True)}
        dumps.append(
            Dump(
                f"{layout} {label}",
                root,
                archives,
                {path.name: rows[path] for path in targets},
                {path.name: path.stat().st_size for path in targets},
                sum((root / "stackexchange" / name).stat().st_size for name in archives),
            )
        )
    shutil.rmtree(xml)
    sizes = ", ".join(f"{d.name}: {mib(d.archive_bytes)}" for d in dumps)
    print(
        f"  generated Posts.xml {mib(dumps[0].sizes['Posts.xml'])}, Users.xml "
        f"{mib(dumps[0].sizes['Users.xml'])}; archives {sizes} "
        f"({time.monotonic() - started:.0f} s)"
    )
    return dumps


# ---------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One measurement: wall seconds, CPU seconds of the client's process tree and of the
    servers meanwhile, the whole machine's CPU seconds meanwhile, and what the command printed
    last (a worker's JSON)."""

    seconds: float
    cpu: float
    servers_cpu: float
    machine_cpu: float
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def total_cpu(self) -> float:
        return self.cpu + self.servers_cpu

    @property
    def floor(self) -> float:
        """The least wall time the machine's CPU work of this run allows on its cores."""
        return self.machine_cpu / CORES

    def __add__(self, other: Measured) -> Measured:
        return Measured(
            self.seconds + other.seconds,
            self.cpu + other.cpu,
            self.servers_cpu + other.servers_cpu,
            self.machine_cpu + other.machine_cpu,
        )


class Servers:
    """CPU seconds of the servers: the HTTP server's threads (in this process, which otherwise
    only waits for the measured command) and moto's process."""

    def __init__(self, moto: MotoS3) -> None:
        import psutil

        self.moto = next(c for c in psutil.Process().children() if c.cmdline() == moto.command)

    def cpu(self) -> float:
        times = self.moto.cpu_times()
        return time.process_time() + times.user + times.system


class MeasureFailed(RuntimeError):
    """A measured command failed or did the wrong work; the message says which and how."""


def measure(
    command: list[str], env: dict[str, str], servers: Servers, stdin: IO[bytes] | None = None
) -> Measured:
    """Run ``command``; its wall and CPU time (``wait4``: the whole process tree). A worker
    that reports ``seconds``/``cpu`` in its JSON (its timed part alone) overrides them."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        servers_before, started = servers.cpu(), time.monotonic()
        machine_before = machine_cpu_seconds()
        process = subprocess.Popen(command, env=env, cwd=REPO, stdin=stdin, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        servers_cpu = servers.cpu() - servers_before
        machine = machine_cpu_seconds() - machine_before
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        if process.returncode != 0:
            tail = err.read().decode(errors="replace")[-2500:]
            raise MeasureFailed(f"{' '.join(command[:4])} … exited {process.returncode}:\n{tail}")
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return Measured(
        result.get("seconds", seconds),
        result.get("cpu", usage.ru_utime + usage.ru_stime),
        servers_cpu,
        result.get("machine_cpu", machine),
        result,
    )


def worker(name: str, spec: dict[str, Any]) -> list[str]:
    """The command that runs ``worker_<name>(spec)`` in a fresh interpreter."""
    return [sys.executable, "-m", "benchmarks.ingest", "--worker", name, json.dumps(spec)]


def run_worker(name: str, env: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """(parse benchmark) run a worker to the end, unmeasured; its JSON result."""
    result = subprocess.run(worker(name, spec), env=env, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the workers


# The validator's interpreter with dump_xml's imports done, not run: its RSS (as psutil reads it).
BARE_VALIDATOR = (
    "import os, runpy, sys; runpy.run_path(sys.argv[1]); "
    "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))"
)


class PeakSampler:
    """On a thread, every ``SAMPLE_SECONDS``: the RSS of this process and of its descendants,
    and the disk used under ``directory``; keeps the peaks above the baselines. psutil finds
    descendants by scanning all of /proc (~5 ms), so the list is refreshed every 10th sample
    only: a validator child lives as long as its member streams. A child still showing our
    command line is between fork and exec (sharing our pages): it is skipped."""

    def __init__(self, directory: Path, child_baseline: int) -> None:
        import psutil

        self.directory, self.child_baseline = directory, child_baseline
        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss
        self.peak = dict.fromkeys(("worker", "children", "together", "disk"), 0)
        self.children_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        children: list[psutil.Process] = []
        for tick in range(sys.maxsize):
            if tick % 10 == 0:
                children = [c for c in self.process.children(recursive=True) if self._exec(c)]
                self.children_seen.update(c.pid for c in children)
            above_children = 0
            for child in children:
                with contextlib.suppress(psutil.Error):  # it ended since the last refresh
                    above_children += max(child.memory_info().rss - self.child_baseline, 0)
            worker = self.process.memory_info().rss - self.baseline
            sample = {
                "worker": worker,
                "children": above_children,
                "together": worker + above_children,
                "disk": allocated_bytes(self.directory),
            }
            self.peak = {name: max(self.peak[name], value) for name, value in sample.items()}
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def _exec(self, child: Any) -> bool:
        import psutil

        try:
            return child.cmdline() != self.process.cmdline()
        except psutil.Error:
            return False


def worker_ingest(spec: dict[str, Any]) -> None:
    """The whole ingest, as the DAG's task calls it; prints time, CPU, peaks and the extras."""
    import psutil  # noqa: F401  # the sampler's: part of the interpreter, not the ingest
    from airflow.models.connection import Connection

    from stackexchange import dump_xml, ingest
    from stackexchange.settings import Storage

    # The first connection lookup configures Airflow's ORM (~1.2 s here), as any hook does once
    # per task process; that is the interpreter's cost too, not the ingest's.
    Connection.get_connection_from_secrets("aws_conn")
    bare = subprocess.run(
        [sys.executable, "-I", "-c", BARE_VALIDATOR, dump_xml.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    with PeakSampler(Path(tempfile.gettempdir()), int(bare.stdout)) as sampler:
        started, cpu_before, machine_before = time.monotonic(), cpu_seconds(), machine_cpu_seconds()
        extras = ingest.ingest(
            SITE, spec["base_url"], "aws_conn", f"bench-{time.time()}", Storage.from_env()
        )
        seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu_before
        machine = machine_cpu_seconds() - machine_before
    peak = {**sampler.peak, "children_seen": len(sampler.children_seen)}
    print(json.dumps({"seconds": seconds, "cpu": cpu, "machine_cpu": machine, "peak": peak,
                      "extras": extras}))  # fmt: skip


def worker_baseline(spec: dict[str, Any]) -> None:
    """curl each archive to disk, 7z x the members, (``checked``: validate them with the project's
    validator, sha256sum them, sha1sum the archives), boto3 upload_file each; phase times."""
    work = Path(spec["work"])
    times: dict[str, float] = {}
    started, cpu_before = time.monotonic(), cpu_seconds()
    machine_before = machine_cpu_seconds()

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        times[name] = now - since
        return now

    archives = {work / url.rpartition("/")[2]: members for url, members in spec["archives"].items()}
    for url, archive in zip(spec["archives"], archives, strict=True):
        subprocess.run(["curl", "-sS", "-f", "-o", str(archive), url], check=True)
    mark = phase("download", started)
    for archive, members in archives.items():
        subprocess.run(
            [spec["tool"], "x", "-y", "-bd", "-bso0", "-bsp0", f"-o{work}", str(archive), *members],
            check=True,
        )
    mark = phase("extract", mark)
    if spec["checked"]:
        for member in MEMBERS:
            with (work / member).open("rb") as stdin:
                result = subprocess.run(
                    validator(member), stdin=stdin, capture_output=True, check=True
                )
            if "rows" not in json.loads(result.stdout):
                raise SystemExit(f"{member} did not validate: {result.stdout!r}")
        mark = phase("validate", mark)
        subprocess.run(["sha256sum", *(str(work / m) for m in MEMBERS)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(["sha1sum", *map(str, archives)], check=True, capture_output=True)
        mark = phase("hash", mark)
    client = s3_client(spec["s3_url"])
    for member in MEMBERS:
        client.upload_file(str(work / member), BUCKET, f"baseline/{member}")
    phase("upload", mark)
    times["seconds"] = time.monotonic() - started
    times["cpu"] = cpu_seconds() - cpu_before
    times["machine_cpu"] = machine_cpu_seconds() - machine_before
    print(json.dumps(times))


def worker_decompress(spec: dict[str, Any]) -> None:
    """The standard library's decoder (as ``stackexchange.archive`` drives it) on each folder
    holding a member we take, output discarded: decoding alone, no CRC, no hand-off."""
    from stackexchange import sevenzip

    started, cpu_before = time.monotonic(), cpu_seconds()
    for path, members in spec["archives"].items():
        data = Path(path).read_bytes()
        signature = sevenzip.parse_signature(data[: sevenzip.SIGNATURE_BYTES], len(data))
        header = data[signature.header_offset : signature.header_offset + signature.header_size]
        layout = sevenzip.parse_header(header, signature, lambda a, b, data=data: data[a:b])
        folders = {e.folder for e in layout.entries if e.name in members and e.folder is not None}
        for index in sorted(folders):
            folder = layout.folders[index]
            decoder = sevenzip.FolderDecoder(folder)
            view = memoryview(data)[folder.pack_offset : folder.pack_offset + folder.pack_size]
            for start in range(0, len(view), MIB):
                for _ in decoder.feed(view[start : start + MIB]):
                    pass
            for _ in decoder.finish():
                pass
    print(json.dumps({"seconds": time.monotonic() - started, "cpu": cpu_seconds() - cpu_before}))


def worker_sha256(spec: dict[str, Any]) -> None:
    """hashlib.sha256 over the extracted members, 1 MiB at a time: hashing alone."""
    import hashlib

    started, cpu_before = time.monotonic(), cpu_seconds()
    buffer = bytearray(MIB)
    for path in spec["files"]:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as src:
            while size := src.readinto(buffer):
                digest.update(memoryview(buffer)[:size])
    print(json.dumps({"seconds": time.monotonic() - started, "cpu": cpu_seconds() - cpu_before}))


def worker_upload(spec: dict[str, Any]) -> None:
    """boto3 upload_file of the extracted members: the upload alone."""
    started, cpu_before = time.monotonic(), cpu_seconds()
    client = s3_client(spec["s3_url"])
    for path in spec["files"]:
        client.upload_file(path, BUCKET, f"upload/{Path(path).name}")
    print(json.dumps({"seconds": time.monotonic() - started, "cpu": cpu_seconds() - cpu_before}))


def worker_parse(spec: dict[str, Any]) -> None:
    """(subprocess) median parse time of each DAG file and of a trivial one, same process."""
    from airflow.models.dagbag import DagBag

    trivial, repeats = spec["trivial"], spec["repeats"]

    references = [Path(trivial).with_name(name) for name in REFERENCES.values()]
    files = [Path(trivial), *references, *sorted(DAGS.glob("*.py"))]
    heavy = ("py7zr", "requests", "boto3", "botocore", "airflow.providers.amazon.aws.hooks",
             "airflow.providers.amazon.aws.assets")  # fmt: skip
    loaded_by: dict[str, list[str]] = {}
    for path in files:  # warm-up: first parses pay the one-off imports
        before = set(sys.modules)
        bag = DagBag(dag_folder=str(path), include_examples=False, safe_mode=False)
        if bag.import_errors:
            error = next(iter(bag.import_errors.values()))[-300:]
            print(f"  {path.name} does not import: {error}", file=sys.stderr)
        loaded_by[path.name] = sorted(
            {
                m.split(".")[0] if not m.startswith("airflow") else m
                for m in set(sys.modules) - before
                if m.startswith(heavy)
            }  # fmt: skip
        )
    times: dict[str, list[float]] = {p.name: [] for p in files}
    for _ in range(repeats):
        for path in files:
            started = time.perf_counter()
            DagBag(dag_folder=str(path), include_examples=False, safe_mode=False)
            times[path.name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({"medians": medians, "trivial": Path(trivial).name, "heavy": loaded_by}))


WORKERS = {
    "ingest": worker_ingest,
    "baseline": worker_baseline,
    "decompress": worker_decompress,
    "sha256": worker_sha256,
    "upload": worker_upload,
    "parse": worker_parse,
}


# ---------------------------------------------------------------------------- one case


def clear_bucket(moto: MotoS3) -> None:
    """Delete every object and open multipart upload: moto holds them in memory and in temp
    files, and the next ingest must not find the previous one's pair."""
    client = moto.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def run_ingest(dump: Dump, base_url: str, env: dict[str, str], servers: Servers) -> Measured:
    """The ingest worker with a fresh TMPDIR; checks the rows it published."""
    tmpdir = Path(tempfile.mkdtemp(prefix="ingest-tmpdir-"))
    try:
        run = measure(
            worker("ingest", {"base_url": base_url}), {**env, "TMPDIR": str(tmpdir)}, servers
        )
        if left := allocated_bytes(tmpdir):
            print(f"  note: the ingest left {mib(left)} in its TMPDIR")
    finally:
        shutil.rmtree(tmpdir)
    published = {Path(extra["uri"]).name: extra["rows"] for extra in run.result["extras"]}
    if published != dump.rows:
        raise MeasureFailed(f"the ingest published rows {published}; the dump holds {dump.rows}")
    return run


def validate_alone(dump: Dump, extracted: Path, env: dict[str, str], servers: Servers) -> Measured:
    """The validator child's CLI on each extracted member, one after the other."""
    runs = []
    for member in MEMBERS:
        path = extracted / member
        if not path.is_file():
            raise MeasureFailed(f"{path} is missing: the baseline did not extract it")
        with path.open("rb") as stdin:
            run = measure(validator(member), env, servers, stdin)
        if run.result.get("rows") != dump.rows[member]:
            raise MeasureFailed(
                f"{member}: the validator says {run.result}, the dump holds "
                f"{dump.rows[member]} rows"
            )
        runs.append(run)
    return runs[0] + runs[1]


def paced_rate(dump: Dump, runs: dict[str, Measured]) -> float:
    """``PACED_SHARE`` of the archive bytes per second the ingest processed: a source that slow
    is the bottleneck, so the ingest should take little longer than the download alone."""
    return PACED_SHARE * dump.archive_bytes / runs["ingest"].seconds


def bench_case(dump: Dump, workdir: Path, tool: str, *, paced_source: bool) -> dict[str, Any]:
    """Every measurement of one dump against one moto server and one HTTP server."""
    from tests.http_fixtures import DumpServer

    print(
        f"\n== {dump.name}: archive(s) {', '.join(dump.archives)}: {mib(dump.archive_bytes)}; "
        f"load average {os.getloadavg()[0]:.1f} on {CORES} cores"
    )
    home = workdir / "airflow-home"
    home.mkdir(exist_ok=True)
    extracted = workdir / "extracted"
    extracted.mkdir()
    runs: dict[str, Measured] = {}
    failed: dict[str, str] = {}
    with MotoS3() as moto, DumpServer(dump.root) as server:
        moto.create_bucket(BUCKET)
        servers = Servers(moto)
        env = worker_env(home, moto.url)
        base_url = f"{server.url}/stackexchange"
        urls = {f"{base_url}/{name}": members for name, members in dump.archives.items()}
        curl = ["curl", "-sS", "-f"]
        for url in urls:
            curl += [url, "-o", os.devnull]
        files = [str(extracted / m) for m in MEMBERS]

        def baseline(checked: bool) -> Measured:
            spec = {"archives": urls, "work": str(extracted), "tool": tool, "s3_url": moto.url,
                    "checked": checked}  # fmt: skip
            return measure(worker("baseline", spec), env, servers)

        archives = {str(dump.served / name): members for name, members in dump.archives.items()}
        steps = {
            "ingest": lambda: run_ingest(dump, base_url, env, servers),
            "naive": lambda: baseline(checked=False),
            "checked": lambda: baseline(checked=True),
            "download": lambda: measure(curl, env, servers),
            "decompress": lambda: measure(
                worker("decompress", {"archives": archives}), env, servers
            ),  # fmt: skip
            "validate": lambda: validate_alone(dump, extracted, env, servers),
            "sha256": lambda: measure(worker("sha256", {"files": files}), env, servers),
            "upload": lambda: measure(
                worker("upload", {"files": files, "s3_url": moto.url}), env, servers
            ),  # fmt: skip
        }
        if paced_source:
            steps["paced download"] = lambda: measure(curl, env, servers)
            steps["paced ingest"] = lambda: run_ingest(dump, base_url, env, servers)
        for name, step in steps.items():
            paced = name.startswith("paced") and "ingest" in runs
            server.faults.bytes_per_second = paced_rate(dump, runs) if paced else 0
            if name.startswith("paced") and not paced:
                continue
            try:
                runs[name] = step()
            except MeasureFailed as exc:
                failed[name] = str(exc)
            finally:
                clear_bucket(moto)
    shutil.rmtree(extracted)
    report_case(dump, runs, failed)
    return {"dump": dump, "runs": runs, "failed": failed}


# ---------------------------------------------------------------------------- reporting


STAGES = {
    "download": "alone: download (curl > /dev/null)",
    "decompress": "alone: decode (stdlib lzma, discarded)",
    "validate": "alone: validate (dump_xml.py child)",
    "sha256": "alone: sha256 (hashlib)",
    "upload": "alone: upload (upload_file)",
}
BASELINES = {
    "naive": "naive: curl, 7z x, upload_file",
    "checked": "same checks in sequence: + validate, sha*sum",
}


def ratio(a: Measured | None, b: Measured | None) -> str:
    return f"{a.seconds / b.seconds:.2f}" if a and b else "—"


def report_case(dump: Dump, runs: dict[str, Measured], failed: dict[str, str]) -> None:
    def row(label: str, run: Measured | None, note: str = "") -> None:
        if run is None:
            print(f"  {label:<46} {'—':>7}")
            return
        print(
            f"  {label:<46} {run.seconds:7.1f} {run.total_cpu:7.1f} "
            f"{f'({run.servers_cpu:.1f})':>9} {run.machine_cpu:9.1f}   {note}".rstrip()
        )

    print(f"  {'step':<46} {'wall s':>7} {'CPU s':>7} {'(servers)':>9} {'machine':>9}")
    ingest = runs.get("ingest")
    row("ingest (streamed)", ingest,
        f"floor {ingest.floor:.1f} s -> {ingest.seconds / ingest.floor:.2f}x (target <= 1.05x)"
        if ingest else "")  # fmt: skip
    for name, label in BASELINES.items():
        run = runs.get(name)
        totals = ("seconds", "cpu", "machine_cpu")
        phases = " + ".join(f"{k} {v:.1f}" for k, v in run.result.items()
                            if k not in totals) if run else ""  # fmt: skip
        row(label, run, phases)
    for stage, label in STAGES.items():
        row(label, runs.get(stage))
    if ingest:
        print(f"  ingest / naive: {ratio(ingest, runs.get('naive'))}x; ingest / same checks in "
              f"sequence: {ratio(ingest, runs.get('checked'))}x (target <= 0.75x)")  # fmt: skip
    validate = runs.get("validate")
    if ingest and validate and runs.get("naive"):
        share = validate.total_cpu / ingest.machine_cpu
        floor = (ingest.machine_cpu - validate.total_cpu) / CORES
        print(
            f"  a free validation would buy: the validator is {100 * share:.0f}% of the ingest's "
            f"machine CPU; without it the floor is {floor:.1f} s, "
            f"{floor / runs['naive'].seconds:.2f}x the naive baseline"
        )
    limited, download = runs.get("paced ingest"), runs.get("paced download")
    if limited and download:
        print(
            f"  source paced at {paced_rate(dump, runs) / 1e6:.1f} MB/s ({100 * PACED_SHARE:.0f}% "
            f"of the ingest's rate): ingest {limited.seconds:.1f} s, curl alone "
            f"{download.seconds:.1f} s -> {limited.seconds / download.seconds:.2f}x "
            "(target <= 1.1x)"
        )
    if ingest:
        peak = ingest.result["peak"]
        print(
            f"  peak RSS above a bare interpreter: worker {mib(peak['worker'])} + "
            f"{peak['children_seen']} validator children {mib(peak['children'])}, together "
            f"{mib(peak['together'])} (target <= 256 MiB)"
        )
        print(
            f"  peak local disk (the worker's TMPDIR): {mib(peak['disk'])}, with an archive of "
            f"{mib(dump.archive_bytes)} (target <= 64 MiB at any size)"
        )
    for name, message in failed.items():
        print(f"  {name} FAILED: {message}")


def report_summary(cases: list[dict[str, Any]]) -> None:
    print(
        "\n== summary (targets: ingest <= 1.05x its floor, <= 0.75x the same checks in sequence; "
        "RSS <= 256 MiB; disk <= 64 MiB)"
    )
    print(
        f"  {'case':<16} {'ingest s':>8} {'floor s':>8} {'/floor':>6} {'naive s':>8} {'/naive':>6} "
        f"{'checked s':>9} {'/checked':>8} {'RSS MiB':>8} {'disk MiB':>8} {'archive MiB':>11}"
    )
    for case in cases:
        runs, dump = case["runs"], case["dump"]
        ingest, naive, checked = runs.get("ingest"), runs.get("naive"), runs.get("checked")
        cells = [
            f"{ingest.seconds:.1f}" if ingest else "failed",
            f"{ingest.floor:.1f}" if ingest else "—",
            f"{ingest.seconds / ingest.floor:.2f}" if ingest else "—",
            f"{naive.seconds:.1f}" if naive else "failed",
            ratio(ingest, naive),
            f"{checked.seconds:.1f}" if checked else "failed",
            ratio(ingest, checked),
            f"{ingest.result['peak']['together'] / MIB:.0f}" if ingest else "—",
            f"{ingest.result['peak']['disk'] / MIB:.0f}" if ingest else "—",
            f"{dump.archive_bytes / MIB:.0f}",
        ]
        widths = [8, 8, 6, 8, 6, 9, 8, 8, 8, 11]
        print(
            f"  {dump.name:<16} "
            + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )


def report_growth(small: dict[str, Any], large: dict[str, Any]) -> None:
    if "ingest" not in small["runs"] or "ingest" not in large["runs"]:
        return
    before = small["runs"]["ingest"].result["peak"]["together"]
    after = large["runs"]["ingest"].result["peak"]["together"]
    print(
        f"  peak RSS growth {small['dump'].name} -> {large['dump'].name}: "
        f"{100 * (after - before) / max(before, 1):+.1f}% (target < 10%)"
    )


COLD_PARSE = """
import sys, time
from airflow.models.dagbag import DagBag
import airflow.sdk  # pre-imported, as the DAG processor does for a file's airflow imports
started = time.perf_counter()
DagBag(dag_folder=sys.argv[1], include_examples=False, safe_mode=False)
print(time.perf_counter() - started)
"""


def cold_parse(paths: list[Path], env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median parse time of each file in fresh interpreters (one-off imports included); the
    files take turns, so a change in the machine's load hits all of them alike."""
    times: dict[str, list[float]] = {path.name: [] for path in paths}
    for _ in range(repeats):
        for path in paths:
            result = subprocess.run([sys.executable, "-c", COLD_PARSE, str(path)], env=env,
                                    capture_output=True, text=True, check=True)  # fmt: skip
            times[path.name].append(float(result.stdout.strip().splitlines()[-1]))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_parse(workdir: Path, repeats: int) -> None:
    print(f"\n== DAG parse time (median of {repeats} parses each, same process, after a warm-up)")
    trivial = workdir / "trivial_dag.py"
    trivial.write_text(TRIVIAL_DAG)
    (workdir / REFERENCES["produce_data_asset.py"]).write_text(PRODUCER_FEATURES_DAG)
    home = workdir / "airflow-home"
    home.mkdir(exist_ok=True)
    result = run_worker("parse", worker_env(home), {"trivial": str(trivial), "repeats": repeats})
    base = result["medians"][result["trivial"]]
    medians = result["medians"]
    for path in sorted(DAGS.glob("*.py")):
        seconds = medians[path.name]
        print(f"  {path.name}: {seconds * 1000:.1f} ms vs trivial {base * 1000:.1f} ms -> ratio "
              f"{seconds / base:.2f} (target <= 1.20)")  # fmt: skip
        if reference := REFERENCES.get(path.name):
            print(f"    vs the same Airflow features without our code ({reference}): "
                  f"{medians[reference] * 1000:.1f} ms -> ratio "
                  f"{seconds / medians[reference]:.2f}")  # fmt: skip
        if result["heavy"].get(path.name):
            print(f"    its first parse imported: {', '.join(result['heavy'][path.name])}")
    dags = sorted(DAGS.glob("*.py"))
    cold_repeats = min(repeats, 9)
    cold = cold_parse([trivial, *dags], worker_env(home), cold_repeats)
    print(f"  cold (fresh interpreter, airflow.sdk pre-imported, median of {cold_repeats}):")
    for path in dags:
        print(f"    {path.name}: {cold[path.name] * 1000:.0f} ms vs trivial "
              f"{cold[trivial.name] * 1000:.0f} ms -> ratio "
              f"{cold[path.name] / cold[trivial.name]:.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts-gib", type=float, default=1.0, help="Posts.xml size (GiB)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="also a single archive this many times larger (make bench: 4; default 1 = skip)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: ~50 MiB Posts.xml, no scaled case, 3 parse repeats",
    )
    parser.add_argument("--parse-repeats", type=int, default=None, help="default 30")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch space (default: the system's temp directory)",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return WORKERS[args.worker[0]](json.loads(args.worker[1]))
    scale = 1.0 if args.quick else args.scale
    repeats = args.parse_repeats or (3 if args.quick else 30)
    if args.posts_gib <= 0 or scale < 1:
        parser.error("--posts-gib must be > 0 and --scale >= 1")
    if missing := [tool for tool in ("curl", "sha256sum", "sha1sum") if not shutil.which(tool)]:
        sys.exit(f"The baselines need {', '.join(missing)}: install them (e.g. 'apt-get install "
                 "curl coreutils') and run again")  # fmt: skip
    try:
        tool = ensure_seven_zip(print)
    except StackError as exc:
        sys.exit(str(exc))
    posts = QUICK_POSTS_BYTES if args.quick else int(args.posts_gib * GIB)

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir))
    # Everything this run writes stays in workdir, moto's temporary files (its objects) too.
    os.environ["TMPDIR"] = str(workdir)
    tempfile.tempdir = None
    try:
        bench_parse(workdir, repeats)
        print(f"\n== ingest (generating Posts.xml of {size_label(posts)})")
        single, split = generate(workdir, posts, ["single", "split"], tool)
        cases = [bench_case(single, workdir, tool, paced_source=True)]
        cases.append(bench_case(split, workdir, tool, paced_source=False))
        for dump in (single, split):
            shutil.rmtree(dump.root)
        if scale > 1:
            print(f"\n== ingest (generating Posts.xml of {size_label(int(posts * scale))})")
            (large,) = generate(workdir, int(posts * scale), ["single"], tool)
            cases.append(bench_case(large, workdir, tool, paced_source=False))
        report_summary(cases)
        if scale > 1:
            report_growth(cases[0], cases[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed := [f"{c['dump'].name}: {', '.join(c['failed'])}" for c in cases if c["failed"]]:
        sys.exit(f"\nSome measurements failed ({'; '.join(failed)}); their errors are above.")


if __name__ == "__main__":
    main()
