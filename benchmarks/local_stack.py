"""Figures of the local stack: time to gold tables, asset hop, memory (PSS).

Runs ``python -m local.stack up --run`` (what ``make demo`` runs, warm .venv: two sample sites)
in a temporary run directory on free ports, prints the figures the stack measured, then stops it.
Targets (issue): gold tables in under 3 minutes on 2 cores, asset hop under 10 seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local.services import free_port
from local.stack.state import PYTHONPATH, REPO, load_info

MIB = 1 << 20


def main() -> None:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    with tempfile.TemporaryDirectory(prefix="bench-local-stack-") as tmp:
        run_dir = Path(tmp) / "run"
        stack = [sys.executable, "-m", "local.stack", "--run-dir", str(run_dir)]
        started = time.monotonic()
        try:
            subprocess.run(
                [*stack, "up", "--run", "--api-port", str(free_port())],
                cwd=REPO,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall = time.monotonic() - started
            info = load_info(run_dir)
        finally:
            subprocess.run([*stack, "down"], cwd=REPO, env=env, check=True, capture_output=True)
    timings, memory = info.timings, info.memory_pss
    print(
        f"local stack ({os.cpu_count()} CPUs, metadata DB {info.database}, {len(info.sites)} "
        f"sites, up to {info.max_active_sites} at once):"
    )
    print(f"  up -> gold tables printed      {wall:6.1f} s  (target < 180 s)")
    print(f"  up -> stack ready (demo-up)    {timings['stack_ready_s']:6.1f} s")
    print(f"  trigger -> gold (demo-run)     {timings['gold_after_trigger_s']:6.1f} s")
    print(f"  producer run                   {timings['producer_run_s']:6.1f} s")
    print(f"  asset hop (event -> consumer)  {timings['asset_hop_s']:6.2f} s  (target < 10 s)")
    print(
        f"  consumer runs ({len(info.consumer_run_ids)}, a job run per site) "
        f"{timings['consumer_run_s']:6.1f} s"
    )
    print(f"  memory, PSS total              {sum(memory.values()) / MIB:6.0f} MiB")
    for name, size in sorted(memory.items(), key=lambda item: -item[1]):
        print(f"    {name:<28} {size / MIB:6.0f} MiB")


if __name__ == "__main__":
    main()
