"""``python -m local.stack up|down`` (what ``make demo`` and ``make demo-down`` run)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from local.stack.processes import StackError
from local.stack.up import DEFAULT_RUN_DIR, Options, StackInfo, down, read_password, up

MIB = 1 << 20


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through up()'s cleanup like Ctrl-C does


def _print_summary(info: StackInfo) -> None:
    print(f"\nDatabricks stand-in run {info.databricks_run_id}: {info.databricks_run_url}")
    print(f"Tables written by the medallion job (under {info.warehouse}):")
    for name, count in info.table_rows.items():
        print(f"  {name:<24} {count:>8,} rows")
    print("Most popular tags (gold_most_popular_tags):")
    for rank, (tag, posts) in enumerate(info.top_tags, start=1):
        print(f"  {rank:>2}. {tag:<20} {posts:>6,} posts")
    timings, memory = info.timings, info.memory_pss
    print(
        f"\nFigures: stack up in {timings['stack_ready_s']:.0f}s, gold tables after "
        f"{timings['gold_ready_s']:.0f}s; producer run {timings['producer_run_s']:.1f}s, "
        f"asset hop (asset event -> consumer run start) {timings['asset_hop_s']:.2f}s, "
        f"consumer run {timings['consumer_run_s']:.1f}s"
    )
    print(
        f"Memory (PSS, MiB): {sum(memory.values()) / MIB:,.0f} in total; "
        + ", ".join(f"{name} {size / MIB:,.0f}" for name, size in sorted(memory.items()))
    )
    print(f"\nAirflow UI: {info.ui_url}  (metadata DB: {info.database})")
    print(f"  user {info.username}  password {read_password(info)}")
    print(f"Logs and pid files: {info.run_dir}/logs, {info.run_dir}/pids")
    default = Path(info.run_dir) == DEFAULT_RUN_DIR.resolve()
    stop = "make demo-down" if default else f"python -m local.stack --run-dir {info.run_dir} down"
    print(f"Stop everything: {stop}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack",
        description="The local stack: Airflow 3 + moto S3 + Databricks stand-in, on 127.0.0.1.",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get("DEMO_RUN_DIR", DEFAULT_RUN_DIR)),
        help="pid files, logs, Airflow home, warehouse (default .run/demo; env DEMO_RUN_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "up", help="start the stack, run the pipeline once, print the gold tables"
    )
    start.add_argument(
        "--api-port",
        type=int,
        default=int(os.environ.get("DEMO_API_PORT", "8080")),
        help="port of Airflow's UI/API on 127.0.0.1 (default 8080; env DEMO_API_PORT)",
    )
    start.add_argument(
        "--database",
        choices=["auto", "postgres", "sqlite"],
        default=os.environ.get("DEMO_DATABASE", "auto"),
        help="Airflow's metadata DB: PostgreSQL if installed (auto), or force one",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for both DAG runs (default 900)",
    )
    commands.add_parser("down", help="stop everything 'up' started (safe when nothing runs)")
    args = parser.parse_args(argv)

    if args.command == "down":
        stopped = down(args.run_dir.resolve())
        print(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")
        return 0

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    options = Options(
        run_dir=args.run_dir, api_port=args.api_port, database=args.database, timeout=args.timeout
    )
    try:
        info = up(options, log=lambda line: print(line, flush=True))
    except StackError as error:
        print(f"\nThe local stack failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: everything started was stopped.", file=sys.stderr)
        return 130
    _print_summary(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
