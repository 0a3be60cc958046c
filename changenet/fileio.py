"""File helpers shared by every action: atomic writes (never a half-written file), groups of files that
appear together, removal of what an interrupted run left behind, and hashes.

Temporary names. Everything is written beside its target under `.<name>.<8 random characters>.tmp`
(a file, or a folder for tools that write several files) and renamed onto `<name>` when complete. A
SIGKILL can leave such an entry behind, never a partial file under a final name; the next run of the
action that writes there calls `remove_leftovers`, which deletes only entries of this exact pattern.

Groups. A model and its companions (JSON sidecar, external weights `.onnx.data`, OpenVINO `.bin`) are
several renames; `atomic_group` orders them so that a kill at any moment leaves one of:
the old group, no main file (stray companions of an absent model, harmless: every reader opens the
main file first and says it is missing), or the complete new group. See `publish_group`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from changenet.errors import ChangenetError

log = logging.getLogger(__name__)

# mkstemp/mkdtemp create private (0600/0700) entries; finished files get the usual 0666/0777 minus umask.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

TEMP_SUFFIX = ".tmp"
# tempfile's random part: 8 characters of [a-z0-9_].
_RANDOM_PART = r"[a-z0-9_]{8}"


def _writable_folder(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ChangenetError(f"cannot create folder '{target.parent}': {exc.strerror}") from exc
    if not os.access(target.parent, os.W_OK):
        raise ChangenetError(f"folder '{target.parent}' is not writable; choose another results_dir")


def temp_beside(path: str | os.PathLike, folder: bool = False) -> Path:
    """Create an empty temporary file (or folder) beside `path`, named `.<name>.<random>.tmp`."""
    target = Path(path)
    _writable_folder(target)
    prefix = f".{target.name}."
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=target.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, else deleted."""
    target = Path(path)
    tmp_path = temp_beside(target)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def temp_folder_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A private work folder beside `path` (`.<name>.<random>.tmp/`), removed with its content at the end;
    one a kill leaves behind is removed by the next run's `remove_leftovers`."""
    folder = temp_beside(path, folder=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_group(main: str | os.PathLike, *companions: str | os.PathLike) -> Iterator[List[Path]]:
    """Temporary paths for `main` and each of `companions` (in that order), published together by
    `publish_group` when the block ends normally, all deleted when it raises.

    Write each file to its temporary path. A companion the new version does not have (no external
    weights this time): delete its temporary file inside the block, and an old file of that name is
    removed when the group is published.
    """
    targets = [Path(main), *(Path(c) for c in companions)]
    temps: List[Path] = []
    try:
        for target in targets:
            temps.append(temp_beside(target))
        yield temps
        publish_group(targets[0], temps[0], list(zip(targets[1:], temps[1:])))
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


def publish_group(main: Path, main_tmp: Path, companions: Sequence[Tuple[Path, Optional[Path]]] = ()) -> None:
    """Move prepared temporary files onto their names as one group; a companion whose temporary file is
    None or absent is removed instead.

    Order: (1) the old main file is removed, (2) each companion is renamed (or removed), (3) the main
    file is renamed last. Readers open the main file first, so after a kill at any point they find the
    old group (before 1), no model (between 1 and 3: the companions present belong to no model and are
    replaced by the next run), or the new group (after 3). Never a new model beside an old sidecar or
    weights file, and never a model without its sidecar.
    """
    Path(main).unlink(missing_ok=True)
    for target, tmp in companions:
        if tmp is not None and tmp.exists():
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        else:
            Path(target).unlink(missing_ok=True)
    os.chmod(main_tmp, FILE_MODE)
    os.replace(main_tmp, main)


def leftover_pattern(name: Optional[str] = None) -> "re.Pattern[str]":
    """The temporary names `temp_beside` gives for target `name` (any target when None)."""
    target = re.escape(name) if name is not None else ".+"
    return re.compile(rf"^\.{target}\.{_RANDOM_PART}{re.escape(TEMP_SUFFIX)}$")


def is_leftover(path: str | os.PathLike, name: Optional[str] = None) -> bool:
    return bool(leftover_pattern(name).match(Path(path).name))


def remove_leftovers(folder: str | os.PathLike, *names: str) -> List[Path]:
    """Delete the temporary files and folders an interrupted run left in `folder` for the targets
    `names` (every changenet temporary name when none is given); returns what was removed.

    Only entries named `.<name>.<8 random characters>.tmp` are touched. Call it at the start of the
    action that owns those targets (a run of the same action that is still writing there would lose its
    temporary file: two runs writing one file at once is a conflict either way).
    """
    folder = Path(folder)
    patterns = [leftover_pattern(n) for n in names] or [leftover_pattern()]
    removed: List[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # absent or unreadable: nothing of ours there
        return removed
    for entry in entries:
        if any(p.match(entry.name) for p in patterns):
            try:
                _remove(entry)
            except OSError:
                continue  # e.g. a read-only dataset folder: the entry stays, harmless under its name
            removed.append(entry)
    if removed:
        log.debug("removed %d temporary file(s) of an interrupted run from '%s'", len(removed), folder)
    return removed


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
