"""Tune's saved state in an experiment folder: written whole or not at all, and checked before a resume.

Tune saves its state (the experiment snapshot, the search algorithm's and the searcher's state, the
callbacks') in a staging folder under /tmp/ray, then copies the whole staging folder into the
experiment folder, about once a second, with pyarrow's ``copy_files``: each file is truncated and then
written, the snapshots of every earlier session of the experiment with it. A driver killed during a
copy left those files empty; ``Tuner.restore`` then logged "Failed to restore the run state" and
started the experiment afresh with nothing to run, and the resume reported the search completed with
49 of its 60 trials (``tests/test_chaos.py``, once in a few runs).

So a local experiment folder receives each file under a temporary name and then renames it into place
(``atomic_state_uploads``), the snapshot last; a file that has not changed since the last copy is not
copied again. ``unreadable_state`` names what a resume would read and cannot, for a folder written
before this or on storage where renaming is not atomic.
"""
from __future__ import annotations

import fnmatch
import os
import pickletools
import re
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any

# Tune's state files at the top of an experiment folder; a resume reads the newest of each by name. Only the
# snapshot is written in place (the others are written under a temporary name and renamed, ray.tune.utils.util's
# _atomic_save), so only a copy of it can be cut short by Tune itself.
SNAPSHOT = "experiment_state-*.json"
READ_AS = {SNAPSHOT: "snapshot", "search_gen_state-*.json": "pickle",
           "basic-variant-state-*.json": "pickle", "searcher-state-*.pkl": "pickle", "callback-states-*.pkl": "pickle",
           "tuner.pkl": "pickle"}
PART = ".valley-part"  # a file being copied in, under its temporary name
SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Tune's syncer -> what upload_whole_files saw
# The end of a whole experiment snapshot: "stats" is the last key Tune writes, and the trials before it are JSON
# strings, in which its unescaped quotes cannot occur. Read from the file's last bytes, not by parsing it all
# (90 MB at 3,000 trials: a second and 200 MB of the driver's memory on every copy).
SNAPSHOT_END = re.compile(rb'"stats": \{"start_time": [-+0-9.eE]+\}\}\s*$')


def whole(path: Path, name: str) -> bool:
    """Whether ``path`` holds a complete file of the kind ``name`` is (a snapshot that ends as Tune ends
    one, a pickle that reaches its STOP opcode; read, not loaded); any other file is taken as it is."""
    kind = next((kind for pattern, kind in READ_AS.items() if fnmatch.fnmatch(name, pattern)), None)
    try:
        if kind == "snapshot":
            with path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 256))
                return bool(SNAPSHOT_END.search(f.read()))
        if kind == "pickle":
            with path.open("rb") as f:
                return any(op.name == "STOP" for op, _, _ in pickletools.genops(f))
    except (OSError, ValueError, EOFError):
        return False
    return True


def unreadable_state(folder: Path) -> list[str]:
    """The newest of each of Tune's state files in ``folder`` that is empty or cut short."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    newest = [max(fnmatch.filter(names, pattern)) for pattern in READ_AS if fnmatch.filter(names, pattern)]
    return [name for name in newest if not whole(folder / name, name)]


def upload_whole_files(local_path: str, fs_path: str, seen: dict[str, tuple[tuple[int, int], bool]]) -> None:
    """Copy the staging folder (or file) ``local_path`` to the local path ``fs_path`` as Tune's upload
    does, each file under a temporary name first, then renamed into place together, the experiment
    snapshot last. One that Tune was rewriting as it was read (the snapshot is written in place: it
    changed during the copy, or the copy is cut short) is left for the next copy. ``seen`` holds each
    file's size and modification time at its last copy, and whether that copy was put in place: a file
    unchanged since is not copied again (nor one refused, such as an earlier session's snapshot cut
    short by an older version, which no copy can mend)."""
    source, target = Path(local_path), Path(fs_path)
    if source.is_file():
        pairs = [(source, target)]
    else:
        pairs = [(Path(root) / name, target / Path(root).relative_to(source) / name)  # not Tune's ".<uuid>-tmp-"
                 for root, _, names in os.walk(source) for name in names if not name.startswith(".")]
    staged = []
    try:
        for src, dst in pairs:
            part = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}{PART}")
            try:
                stat = src.stat()
                key = (stat.st_size, stat.st_mtime_ns)
                last, placed = seen.get(str(src), (None, False))
                if last == key and (dst.exists() or not placed):
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, part)
                after = src.stat()
            except FileNotFoundError:  # replaced or removed by Tune as the folder was walked
                part.unlink(missing_ok=True)
                continue
            except OSError:
                part.unlink(missing_ok=True)
                raise
            if (after.st_size, after.st_mtime_ns) != key:  # rewritten as it was read: the next copy takes it
                part.unlink()
            elif not fnmatch.fnmatch(dst.name, SNAPSHOT) or whole(part, dst.name):  # the rest is written atomically
                staged.append((part, dst, str(src), key))
            else:
                part.unlink()
                seen[str(src)] = (key, False)
        staged.sort(key=lambda entry: fnmatch.fnmatch(entry[1].name, SNAPSHOT))
        for part, dst, src, key in staged:
            os.replace(part, dst)
            seen[src] = (key, True)
    finally:
        for part, *_ in staged:
            part.unlink(missing_ok=True)


def atomic_state_uploads() -> None:
    """Have Tune's uploads to a local experiment folder go through ``upload_whole_files``; uploads
    to other storage (S3, GCS) stay Tune's own."""
    import pyarrow.fs
    from ray.train._internal.storage import _FilesystemSyncer as Syncer

    if getattr(Syncer._sync_up_command, "_valley", False):
        return
    original = Syncer._sync_up_command

    def _sync_up_command(self: Any, local_path: str, uri: str, exclude: list | None = None) -> tuple[Any, dict]:
        if exclude or not isinstance(self.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return original(self, local_path, uri, exclude)
        # kept beside the syncer, not in it: Tune pickles the syncer into every trial's saved state
        return upload_whole_files, {"local_path": local_path, "fs_path": uri, "seen": SEEN.setdefault(self, {})}

    _sync_up_command._valley = True  # type: ignore[attr-defined]
    Syncer._sync_up_command = _sync_up_command


def clear_parts(folder: Path) -> None:
    """Remove the temporary files of copies a killed driver left unfinished."""
    for part in [*folder.glob(f".*{PART}"), *folder.glob(f"*/.*{PART}")]:
        part.unlink(missing_ok=True)
