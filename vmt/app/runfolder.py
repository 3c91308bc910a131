"""A run folder that a crash can never leave half-written: generations, a manifest, a lock.

Every write of a run (a periodic checkpoint, the end of training, an evaluation)
makes a new *generation*: all of its files are written into a fresh folder
``gen-NNNN.tmp/``, flushed to disk, the folder is renamed to ``gen-NNNN/``, and the
generation is published by replacing ``manifest.json`` atomically (write a temporary
file, ``fsync``, ``os.replace``). The manifest names the generation, the training
iteration and the SHA-256 of every file, so a reader sees the old complete set or the
new complete set, never a mix, and a file changed afterwards is detected. The
top-level names (``checkpoint.ckpt``, ``run.json``, ``metrics.json``, ...) are
symbolic links through one link ``current -> gen-NNNN``, switched atomically after
the manifest: programs that open ``run/metrics.json`` directly also see one
complete generation. The previous generation is kept (a reader that started on it
can finish); older ones, ``*.tmp`` leftovers of a killed writer and orphaned
generations are removed when the next writer starts.

One writer at a time: `RunLock` holds an OS lock (``fcntl.flock``) on
``.lock`` for the whole of ``vmt train``/``vmt evaluate``; the kernel releases it
when the process exits, however it exits.

Fault injection for tests and ``benchmarks/kill_trials.py``: with the environment
variable ``VMT_FAULT=point`` (or ``point:k`` for the ``k``-th time the point is
reached) the process ends with ``os._exit(77)`` at that point; see `fault()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["MANIFEST", "RunFolderError", "RunBusyError", "RunLock", "RunFolder", "Generation", "fault",
           "atomic_text"]

MANIFEST = "manifest.json"
CURRENT = "current"
LOCK = ".lock"
FORMAT = "vmt-run"
_GEN = re.compile(r"^gen-(\d{4,})$")
_hits: Dict[str, int] = {}


class RunFolderError(ValueError):
    """A run folder is missing, partial, altered or not a run folder (the message says how to recover)."""


class RunBusyError(RunFolderError):
    """Another process holds the run folder's lock."""


def fault(point: str, before_exit: Optional[Callable[[], Any]] = None) -> None:
    """End the process here (``os._exit(77)``) when ``VMT_FAULT`` names ``point``.

    ``VMT_FAULT=point:k`` fires on the ``k``-th time the point is reached (default the
    first); ``before_exit`` (e.g. truncating a file, to stand for a write cut short)
    runs first. A test hook: a kill -9 at a chosen moment, without timing races.
    """
    spec = os.environ.get("VMT_FAULT")
    if not spec:
        return
    name, _, k = spec.partition(":")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(k or 1):
        if before_exit is not None:
            before_exit()
        os._exit(77)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run>/.lock``, held until `release()` or process exit."""

    def __init__(self, run: Path, what: str = "vmt"):
        import fcntl

        self.path = Path(run) / LOCK
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise RunBusyError(f"{run} is in use by {holder}; wait for it to finish or choose another --out") \
                from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} ({what})\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Generation:
    """A generation being written: a private folder; nothing in it is visible until published."""

    def __init__(self, folder: "RunFolder", number: int):
        self.folder, self.number = folder, number
        self.name = f"gen-{number:04d}"
        self.path = folder.path / f"{self.name}.tmp"
        self.path.mkdir()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        """An error before `RunFolder.publish()` (a full disk, a failed evaluation) discards the folder.

        (A kill leaves it: the next writer's `RunFolder.clean()` removes it.) A failed
        write is reported as one ``OSError`` that says what the folder still holds.
        """
        if not isinstance(error, Exception) or not self.path.name.endswith(".tmp"):
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if isinstance(error, OSError):
            try:
                m = self.folder.published(verify=False)
            except RunFolderError:
                m = None
            held = (f"{self.folder.path} keeps its last published generation (iteration {m['iteration']}, "
                    f"stage {m['stage']!r}); `vmt train --resume {self.folder.path}` continues it once the cause "
                    "is fixed") if m else f"{self.folder.path} holds no published run yet"
            failed = OSError(f"{error}; {held}")
            failed.errno = error.errno
            raise failed from error

    def write_text(self, name: str, text: str, point: Optional[str] = None) -> None:
        """Write a text file; a fault at ``point`` stops the process halfway through it."""
        with open(self.path / name, "w") as f:
            f.write(text[: len(text) // 2])
            if point is not None:
                fault(point, f.flush)
            f.write(text[len(text) // 2:])

    def carry(self, source: Path, name: Optional[str] = None) -> None:
        """Take an unchanged file of the previous generation (a hard link; a copy where links fail)."""
        target = self.path / (name or source.name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


class RunFolder:
    """A run folder: reads the published generation, writes and publishes new ones.

    Parameters
    ----------
    path : pathlib.Path
        The folder (``--out`` of ``vmt train``).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        """Whether the folder holds a published run (or an older run without a manifest)."""
        return (self.path / MANIFEST).exists() or (self.path / "run.json").exists() or bool(self._generations())

    def manifest(self) -> Optional[dict]:
        """The published manifest, ``None`` for a folder without one; checked for shape."""
        if not self.path.exists():
            raise RunFolderError(f"{self.path} does not exist")
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder")
        path = self.path / MANIFEST
        if not path.exists():
            return None
        try:
            m = json.loads(path.read_text())
            if m.get("format") != FORMAT or not _GEN.match(m.get("generation", "")) or "files" not in m:
                raise ValueError("not a vmt run manifest")
        except (ValueError, OSError) as e:
            raise RunFolderError(f"{path} is unreadable ({e}); it is only ever replaced atomically, so it "
                                 "was changed by hand: delete it and run `vmt evaluate` on the folder to "
                                 "rebuild it from the newest complete generation") from None
        return m

    def published(self, verify: bool = True) -> Optional[dict]:
        """The manifest of the run, its files checked against their hashes; ``None`` without a run.

        A folder whose ``manifest.json`` is gone but which holds complete generations
        is read from the newest of them (each carries its own copy of the manifest).
        """
        m = self.manifest()
        if m is None:
            m = self._newest_generation()
            if m is None:
                return None
        if verify:
            self.verify(m)
        return m

    def generation_path(self, manifest: dict) -> Path:
        return self.path / manifest["generation"]

    def file(self, manifest: dict, name: str) -> Path:
        """The path of a published file (``RunFolderError`` if the generation does not list it)."""
        if name not in manifest["files"]:
            raise RunFolderError(f"{self.path} has no {name} at iteration {manifest['iteration']} "
                                 f"(stage {manifest['stage']!r}); " + _RECOVER[manifest["stage"]])
        return self.generation_path(manifest) / name

    def verify(self, manifest: dict, names: Optional[list] = None) -> None:
        """Check that the named files (default: all) exist and match their hashes."""
        gen = self.generation_path(manifest)
        for name in names or manifest["files"]:
            entry, path = manifest["files"][name], gen / name
            if not path.exists():
                raise RunFolderError(f"{path} is missing although the manifest lists it; "
                                     + _fix(name, self.path))
            if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
                raise RunFolderError(f"{path} does not match the manifest (changed after it was written); "
                                     + _fix(name, self.path))

    def _generations(self) -> list:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _GEN.match(p.name) and p.is_dir())

    def _newest_generation(self) -> Optional[dict]:
        for gen in reversed(self._generations()):
            with contextlib.suppress(ValueError, OSError):
                m = json.loads((gen / MANIFEST).read_text())
                self.verify(m)
                return m
        return None

    # ------------------------------------------------------------------ writing (hold the lock)
    def lock(self, what: str) -> RunLock:
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock(self.path, what)

    def clean(self) -> list:
        """Remove what a killed writer left: ``*.tmp`` files and folders, unpublished and old
        generations; repair ``current`` and the top-level links. Returns what was removed."""
        m = self.published(verify=False) if self.path.exists() else None
        keep = {m["generation"], m.get("previous")} if m else None  # no run: keep every generation
        removed = []
        for p in list(self.path.iterdir()):
            stale = p.name.endswith(".tmp") or (keep is not None and _GEN.match(p.name) and p.name not in keep)
            if stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p.name)
        for gen in self._generations():
            for p in gen.glob("*.tmp"):
                p.unlink()
                removed.append(f"{gen.name}/{p.name}")
        if m is not None:
            if not (self.path / MANIFEST).exists():
                atomic_text(self.path / MANIFEST, json.dumps(m, indent=2))
            self._link(m)
        return removed

    def begin(self) -> Generation:
        """A new, private generation folder (numbered after every existing one).

        Use it as ``with folder.begin() as gen:``: an exception before it is published
        removes it, so the folder shows its last published generation and nothing else.
        """
        numbers = [int(_GEN.match(p.name).group(1)) for p in self._generations()]
        return Generation(self, max(numbers, default=0) + 1)

    def publish(self, gen: Generation, **facts: Any) -> dict:
        """Make ``gen`` the run's published generation; ``facts`` (iteration, stage, ...) go into the manifest."""
        previous = self.manifest() if (self.path / MANIFEST).exists() else None
        files = {}
        for p in sorted(gen.path.iterdir()):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(p, 0o644)
            files[p.name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
        manifest = dict(format=FORMAT, version=1, generation=gen.name,
                        previous=previous["generation"] if previous else None,
                        written=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts, files=files)
        text = json.dumps(manifest, indent=2)
        (gen.path / MANIFEST).write_text(text)
        _fsync_dir(gen.path)
        final = self.path / gen.name
        os.replace(gen.path, final)
        gen.path = final
        _fsync_dir(self.path)
        fault("publish")
        atomic_text(self.path / MANIFEST, text)  # <- the commit point
        _fsync_dir(self.path)
        fault("published")
        self._link(manifest)
        for old in self._generations():
            if old.name not in (manifest["generation"], manifest["previous"]):
                shutil.rmtree(old, ignore_errors=True)
        return manifest

    def _link(self, manifest: dict) -> None:
        """Point ``current`` at the published generation and each top-level name through it."""
        tmp = self.path / f".{CURRENT}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(manifest["generation"], tmp)
        os.replace(tmp, self.path / CURRENT)
        for p in self.path.iterdir():  # links to files the current generation lacks
            if p.is_symlink() and p.name != CURRENT and not p.exists():
                p.unlink()
        for name in manifest["files"]:
            top = self.path / name
            if not top.is_symlink():
                if top.exists():  # a plain file of a run written before generations
                    top.unlink()
                os.symlink(f"{CURRENT}/{name}", top)

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator["RunFolder"]:
        """Hold the lock and clean leftovers for the duration of a write."""
        lock = self.lock(what)
        try:
            self.clean()
            yield self
        finally:
            lock.release()


_RECOVER = {
    "training": "the run was interrupted during training: `vmt train --resume RUN` continues it, "
                "`vmt evaluate RUN` evaluates it as it is",
    "trained": "training finished but the evaluation did not: `vmt evaluate RUN` (or `vmt train --resume RUN`) "
               "computes it",
    "evaluated": "`vmt evaluate RUN` recomputes it",
}


def _fix(name: str, run: Path) -> str:
    if name in ("checkpoint.ckpt", "run.json"):
        return (f"restore it from a backup, or delete {run / MANIFEST} to fall back to the previous "
                "generation, or train again")
    return f"`vmt evaluate {run}` recomputes it from the checkpoint"
