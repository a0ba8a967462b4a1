"""System prerequisites pip cannot install: Java 17 for Spark, Chromium for the browser tests,
the 7z tool for the benchmark.

Each is installed with apt-get when we are root on Debian/Ubuntu; otherwise the error says how.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

from local.stack import StackError

JAVA_PACKAGE = "openjdk-17-jre-headless"
CHROMIUM_PACKAGE = "chromium"  # Debian's; Playwright drives it, no browser download
SEVEN_ZIP_PACKAGE = "7zip"  # Debian 12+/Ubuntu 24.04+; its binary is 7zz


def _apt_install(package: str, why: str, log: Callable[[str], None]) -> None:
    """Install ``package`` with apt-get if we can (root on Debian/Ubuntu); else do nothing."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    log(f"Installing {package} ({why}) with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        subprocess.run(cmd, env=env, check=True)


def java_major() -> int | None:
    """The major version of ``java`` on PATH (None if there is none)."""
    if shutil.which("java") is None:
        return None
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)', result.stderr + result.stdout)
    return int(match.group(1)) if match else None


def ensure_java(log: Callable[[str], None]) -> None:
    """Java 17+ for PySpark."""
    major = java_major()
    if major is not None and major >= 17:
        return
    _apt_install(JAVA_PACKAGE, "PySpark needs Java 17", log)
    if (java_major() or 0) >= 17:
        return
    found = f"found Java {major}" if major else "no java on PATH"
    raise StackError(
        f"PySpark needs Java 17 or newer ({found}). Install it, e.g. "
        f"'sudo apt-get install {JAVA_PACKAGE}' (Debian/Ubuntu) or 'brew install openjdk@17' "
        "(macOS), then run again."
    )


def ensure_chromium(log: Callable[[str], None]) -> str:
    """Chromium for the browser tests (headless, driven by Playwright); its path."""
    if found := shutil.which("chromium"):
        return found
    _apt_install(CHROMIUM_PACKAGE, "the browser tests drive it headless", log)
    if found := shutil.which("chromium"):
        return found
    raise StackError(
        f"The browser tests need Chromium. Install it, e.g. 'sudo apt-get install "
        f"{CHROMIUM_PACKAGE}' (Debian), or any Chromium as 'chromium' on PATH, then run again."
    )


def seven_zip() -> str | None:
    """The 7-Zip command line tool on PATH (``7zz`` from Debian's 7zip, or ``7z``)."""
    return next((found for name in ("7zz", "7z") if (found := shutil.which(name))), None)


def ensure_seven_zip(log: Callable[[str], None]) -> str:
    """The 7z tool the ingest benchmark's baseline runs; its path."""
    if found := seven_zip():
        return found
    _apt_install(SEVEN_ZIP_PACKAGE, "the ingest benchmark's baseline runs 7z", log)
    if found := seven_zip():
        return found
    raise StackError(
        f"The ingest benchmark needs the 7z tool. Install it, e.g. 'sudo apt-get install "
        f"{SEVEN_ZIP_PACKAGE}' (Debian 12+/Ubuntu 24.04+; 'p7zip-full' on older ones) or "
        "'brew install sevenzip' (macOS), then run again."
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m local.stack.prerequisites java|chromium`` (``make java``, ``make chromium``)."""
    ensure = {"java": ensure_java, "chromium": ensure_chromium}
    names = argv if argv is not None else sys.argv[1:]
    if len(names) != 1 or names[0] not in ensure:
        print(f"usage: python -m local.stack.prerequisites {'|'.join(ensure)}", file=sys.stderr)
        return 2
    try:
        ensure[names[0]](print)
    except (StackError, subprocess.CalledProcessError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
