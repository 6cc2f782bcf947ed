"""Other transformers versions, installed once into a cache, for the export-shim compat tests.

prunekit declares ``transformers>=5.0,<6``; an exported heterogeneous model carries a modeling
file that must run on every version in that range. The tests run it against the oldest and the
newest release, each installed with ``pip install --target`` (no dependency resolution) together
with the exact older dependencies it needs; everything else (torch, numpy, safetensors, ...)
comes from the running environment. ``make compat`` (a prerequisite of ``make test``) runs
``python tests/unit/compat_helpers.py`` to build the caches.

Run as a script: installs every missing cache. Exit status 1 if an install fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

# version -> the packages installed beside it. 5.0.0 needs huggingface_hub 1.x (which talks
# httpx, not httpx2) and tokenizers <= 0.23.0 (0.23.0 is not on PyPI: 0.22.2 is the newest fit).
# 5.24.0 takes its dependencies from the environment (the versions prunekit itself runs with).
VERSIONS: dict[str, tuple[str, ...]] = {
    "5.0.0": (
        "huggingface_hub==1.3.7",
        "tokenizers==0.22.2",
        "httpx==0.28.1",
        "httpcore==1.0.9",
    ),
    "5.24.0": (),
}
OLDEST, NEWEST = "5.0.0", "5.24.0"
READY_MARK = ".prunekit-ready"


def cache_root() -> Path:
    base = os.environ.get("PRUNEKIT_CACHE_DIR") or str(Path.home() / ".cache" / "prunekit")
    return Path(base) / "compat"


def target_dir(version: str) -> Path:
    return cache_root() / f"transformers-{version}"


def packages(version: str) -> list[str]:
    return [f"transformers=={version}", *VERSIONS[version]]


def is_ready(version: str) -> bool:
    """The cache is complete and holds today's pins (the mark is written after pip succeeded)."""
    mark = target_dir(version) / READY_MARK
    return mark.is_file() and mark.read_text().split() == packages(version)


def install(version: str) -> None:
    """pip install --target <cache> transformers==version + its pinned extras, no resolution.

    Locked, and staged in a folder of its own: two installs at once (two `make compat`, parallel
    test runs on a clean machine) neither write into the same staging folder nor both install."""
    target = target_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if is_ready(version):
            return
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        try:
            wanted = packages(version)
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
            subprocess.run([*pip, str(staging), *wanted], check=True)
            (staging / READY_MARK).write_text(" ".join(wanted) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    for version in VERSIONS:
        if is_ready(version):
            print(f"transformers {version}: cached in {target_dir(version)}")
            continue
        print(f"transformers {version}: installing into {target_dir(version)}")
        try:
            install(version)
        except subprocess.CalledProcessError as exc:
            print(f"transformers {version}: pip failed ({exc.returncode})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
