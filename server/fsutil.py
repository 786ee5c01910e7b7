"""Files and directories that appear complete or not at all: write to a temporary sibling, then rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield `<target>.tmp-<pid>` to fill; on success it replaces `target` in one rename, on any error it
    is removed and `target` is left as it was. A crash leaves only a `.tmp-<pid>` sibling, which the
    next run for the same target removes."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover, or an older copy being replaced
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield `<target>.tmp-<pid>` to write; on success it replaces `target` in one rename, on any error it is
    removed and `target` is left as it was."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
