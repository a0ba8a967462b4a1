"""``python -m local.stack up|run|status|logs|down`` (what the ``make demo*`` targets run)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from local.stack import StackError, pipeline, status
from local.stack.state import DEFAULT_RUN_DIR, StackInfo, read_password
from local.stack.up import Options, down, up

MIB = 1 << 20


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through up()'s cleanup like Ctrl-C does


def _log(line: str) -> None:
    print(line, flush=True)


def _make(info: StackInfo, target: str) -> str:
    """The command for ``target`` on this stack: the make target for the default run dir."""
    if Path(info.run_dir) == DEFAULT_RUN_DIR.resolve():
        return f"make demo-{target}"
    return f"python -m local.stack --run-dir {info.run_dir} {target}"


def _print_ready(info: StackInfo) -> None:
    print(f"\nAirflow UI: {info.ui_url}  (metadata DB: {info.database})")
    print(f"  user {info.username}  password {read_password(info)}")
    print(f"Logs and pid files: {info.run_dir}/logs, {info.run_dir}/pids")
    print(f"Run the pipeline: {_make(info, 'run')}; what runs: {_make(info, 'status')}")
    print(f"Stop everything: {_make(info, 'down')}")


def _print_summary(info: StackInfo) -> None:
    print(
        f"\nGold tables per site: each table under {info.warehouse} holds every site's rows, "
        "told apart by its site column; the rows of each site:"
    )
    for site, result in info.sites.items():
        print(f"\n== {site} ==")
        print(f"Databricks stand-in run {result.databricks_run_id}: {result.databricks_run_url}")
        for name, count in result.table_rows.items():
            print(f"  {name:<24} {count:>8,} rows")
        print("  Most popular tags (gold_most_popular_tags):")
        for rank, (tag, posts) in enumerate(result.top_tags, start=1):
            print(f"  {rank:>4}. {tag:<20} {posts:>6,} posts")
    timings, memory = info.timings, info.memory_pss
    print(
        f"\nFigures: stack up in {timings['stack_ready_s']:.0f}s, gold tables of "
        f"{len(info.sites)} sites {timings['gold_after_trigger_s']:.0f}s after the trigger; "
        f"producer run {timings['producer_run_s']:.1f}s (up to {info.max_active_sites} "
        f"site(s) at once), asset hop (asset event -> consumer run start) "
        f"{timings['asset_hop_s']:.2f}s, {len(info.consumer_run_ids)} consumer run(s) "
        f"{timings['consumer_run_s']:.1f}s"
    )
    print(
        f"Memory (PSS, MiB): {sum(memory.values()) / MIB:,.0f} in total; "
        + ", ".join(f"{name} {size / MIB:,.0f}" for name, size in sorted(memory.items()))
    )
    _print_ready(info)


def _bound(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def _parser() -> argparse.ArgumentParser:
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
    timeout = argparse.ArgumentParser(add_help=False)
    timeout.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for both DAG runs (default 900)",
    )
    start = commands.add_parser(
        "up",
        parents=[timeout],
        help="start the stack (a running one is restarted); --run also runs the pipeline",
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
        "--max-active-sites",
        type=_bound,
        default=os.environ.get("DEMO_MAX_ACTIVE_SITES", "1"),
        help="sites the producer checks and ingests at once, STACKEXCHANGE_MAX_ACTIVE_SITES "
        "(default 1: one site ingests while the other's Databricks job runs; env "
        "DEMO_MAX_ACTIVE_SITES)",
    )
    start.add_argument(
        "--run",
        action="store_true",
        help="then run the pipeline once and print the gold tables (make demo)",
    )
    commands.add_parser(
        "run",
        parents=[timeout],
        help="trigger the pipeline on the running stack, wait for the gold tables, print them",
    )
    commands.add_parser("status", help="services, ports, URLs, login and recent DAG runs")
    logs = commands.add_parser("logs", help="tail the services' logs (all, or those named)")
    logs.add_argument("services", nargs="*", metavar="SERVICE", help="e.g. scheduler s3")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines of history (40)")
    logs.add_argument("--no-follow", action="store_true", help="print and exit")
    commands.add_parser("down", help="stop everything 'up' started (safe when nothing runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_dir = args.run_dir.resolve()

    if args.command == "down":
        stopped = down(run_dir)
        print(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")
        return 0
    try:
        if args.command == "status":
            return 0 if status.status(run_dir, print) else 1
        if args.command == "logs":
            status.tail_logs(run_dir, args.services, args.lines, follow=not args.no_follow)
            return 0  # not reached: tail replaced this process
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGHUP, _terminate)
        if args.command == "run":
            _print_summary(pipeline.run(run_dir, args.timeout, _log))
            return 0
        options = Options(
            run_dir=run_dir,
            api_port=args.api_port,
            database=args.database,
            run=args.run,
            timeout=args.timeout,
            max_active_sites=args.max_active_sites,
        )
        info = up(options, log=_log)
    except StackError as error:
        print(f"\nThe local stack failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "up":
            print("\nInterrupted: everything started was stopped.", file=sys.stderr)
        else:
            message = "stopped waiting; the stack and its DAG runs go on"
            print(f"\nInterrupted: {message}.", file=sys.stderr)
        return 130
    if args.run:
        _print_summary(info)
    else:
        print(f"\nThe stack is up in {info.timings['stack_ready_s']:.0f}s; both DAGs are unpaused.")
        _print_ready(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
