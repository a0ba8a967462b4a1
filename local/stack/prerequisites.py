"""System prerequisites of the stack that pip cannot install: Java 17 for Spark."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable

from local.stack.processes import StackError

JAVA_PACKAGE = "openjdk-17-jre-headless"


def java_major() -> int | None:
    """The major version of ``java`` on PATH (None if there is none)."""
    if shutil.which("java") is None:
        return None
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)', result.stderr + result.stdout)
    return int(match.group(1)) if match else None


def ensure_java(log: Callable[[str], None]) -> None:
    """Java 17+ for PySpark: install it with apt when root on Debian/Ubuntu, else say how."""
    major = java_major()
    if major is not None and major >= 17:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"Installing {JAVA_PACKAGE} (PySpark needs Java 17) with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", JAVA_PACKAGE],
        ):
            subprocess.run(cmd, env=env, check=True)
        if (java_major() or 0) >= 17:
            return
    found = f"found Java {major}" if major else "no java on PATH"
    raise StackError(
        f"PySpark needs Java 17 or newer ({found}). Install it, e.g. "
        f"'sudo apt-get install {JAVA_PACKAGE}' (Debian/Ubuntu) or 'brew install openjdk@17' "
        "(macOS), then run make demo again."
    )
