"""Building and caching the shared libraries liquidjax compiles: the CPU kernels
(:mod:`liquidjax._native`, C++) and the C stepper (:mod:`liquidjax.export`, C99).

One home for what both need: finding the compiler, naming a build by a hash of everything that
makes it (the sources, the flags, the CPU's features, whatever else the caller adds), the cache
folder (``$XDG_CACHE_HOME/liquidjax``), and removing stale builds (those of older sources).

A build is the file ``<folder>/<stem>.<hash>.so`` (or the folder ``<folder>/<stem>.<hash>/`` with
its sources and ``<stem>.so``). It is reused while it exists (and marked used); a new one is
compiled from its sources, written to a temporary folder beside it, and moved in place
atomically, so concurrent builders never see a half-written library. After a build, only the
``keep`` most recently used builds of the same stem stay in the folder.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_COMPILERS = {"c": ("CC", ("cc", "gcc")), "c++": ("CXX", ("c++", "g++"))}


def compiler(language: str) -> str | None:
    """The path of the compiler for ``language`` (``"c"``: ``$CC``, else ``cc``, else ``gcc``;
    ``"c++"``: ``$CXX``, else ``c++``, else ``g++``), or ``None``."""
    env, names = _COMPILERS[language]
    given = os.environ.get(env)
    for name in (given,) if given else names:
        path = shutil.which(name)
        if path:
            return path
    return None


def compiler_names(language: str) -> str:
    """The compilers :func:`compiler` tries, for an error message."""
    env, names = _COMPILERS[language]
    return os.environ.get(env) or f"${env}, " + ", ".join(names)


def cpu_features() -> bytes:
    """The CPU's feature flags (builds use ``-march=native``): a library built on another
    machine sharing the folder is not loaded here."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith((b"flags", b"Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".encode()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/liquidjax`` (default ``~/.cache/liquidjax``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liquidjax"


def tag(sources: Mapping[str, str | bytes], flags: Sequence[str], extra: bytes = b"") -> str:
    """The hash naming a build: the files (names and contents), the flags, the CPU's features
    and ``extra`` (e.g. the version of the headers compiled against)."""
    h = hashlib.sha256()
    for name in sorted(sources):
        text = sources[name]
        h.update(name.encode() + b"\0" + (text.encode() if isinstance(text, str) else text) + b"\0")
    h.update("\0".join(flags).encode() + b"\0" + cpu_features() + b"\0" + extra)
    return h.hexdigest()[:16]


def _library(folder: Path, stem: str, name: str, keep_sources: bool) -> Path:
    return folder / name / f"{stem}.so" if keep_sources else folder / f"{name}.so"


def find(stem: str, sources: Mapping[str, str | bytes], flags: Sequence[str],
         folders: Sequence[Path], extra: bytes = b"", keep_sources: bool = False) -> Path | None:
    """The existing build of these sources in one of ``folders``, or ``None``."""
    name = f"{stem}.{tag(sources, flags, extra)}"
    for folder in folders:
        path = _library(folder, stem, name, keep_sources)
        if path.exists():
            try:
                os.utime(path)  # used now: the last to go when stale builds are removed
            except OSError:
                pass
            return path
    return None


def build(stem: str, sources: Mapping[str, str | bytes], units: Sequence[str], *,
          language: str, flags: Sequence[str], folders: Sequence[Path], extra: bytes = b"",
          link: Sequence[str] = (), keep: int = 1, keep_sources: bool = False,
          verbose: bool = False) -> Path:
    """The shared library built from ``sources`` (file name → contents; those named in
    ``units`` are compiled, the others, e.g. headers, sit beside them) with ``flags``: the
    existing build (:func:`find`), else a new one in the first writable of ``folders``, after
    which only the ``keep`` most recently used builds of ``stem`` stay there. The build is
    ``<stem>.<hash>.so``, or with ``keep_sources`` the folder ``<stem>.<hash>/`` holding the
    sources and ``<stem>.so``. A compiler unknown to ``-march=native`` builds generic code.
    Raises ``RuntimeError`` (no compiler, no writable folder, the compiler's message)."""
    found = find(stem, sources, flags, folders, extra, keep_sources)
    if found is not None:
        return found
    cc = compiler(language)
    if cc is None:
        raise RuntimeError(f"no {language.upper()} compiler was found ({compiler_names(language)})")
    name = f"{stem}.{tag(sources, flags, extra)}"
    errors = []
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=folder))
        except OSError as e:  # e.g. a read-only package folder: try the next
            errors.append(f"{folder}: {e}")
            continue
        try:
            for fname, text in sources.items():
                (work / fname).write_bytes(text.encode() if isinstance(text, str) else text)
            opts = list(flags)
            while True:
                cmd = [cc, *opts, *(str(work / f) for f in units), "-o", str(work / f"{stem}.so"),
                       *link]
                if verbose:
                    print(" ".join(cmd), file=sys.stderr)
                res = subprocess.run(cmd, capture_output=True, text=True)
                if (res.returncode == 0 or "-march=native" not in opts
                        or "march" not in res.stderr):
                    break
                opts.remove("-march=native")
            if res.returncode != 0:
                raise RuntimeError(f"compiling {', '.join(units)} with {cc} failed:\n"
                                   f"{res.stderr[-4000:]}")
            # atomic: concurrent builders each use their own temporary folder
            if not keep_sources:
                os.replace(work / f"{stem}.so", folder / f"{name}.so")
            else:
                try:
                    work.rename(folder / name)
                except OSError:  # another builder was first: its build is the same
                    pass
        finally:
            shutil.rmtree(work, ignore_errors=True)
        remove_stale(folder, stem, keep)
        return _library(folder, stem, name, keep_sources)
    raise RuntimeError(f"no writable folder for {stem}: " + "; ".join(errors))


def remove_stale(folder: Path, stem: str, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used builds of ``stem`` in ``folder`` (builds of
    older sources, flags or toolchains); the removed paths."""
    builds = sorted(folder.glob(f"{stem}.*"), key=lambda p: _mtime(p, stem), reverse=True)
    removed = []
    for old in builds[keep:]:
        try:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
            removed.append(old)
        except OSError:  # another process removed it, or a read-only folder: harmless
            pass
    return removed


def _mtime(build: Path, stem: str) -> float:
    """When a build was last used (:func:`find` marks its library)."""
    try:
        return (build / f"{stem}.so" if build.is_dir() else build).stat().st_mtime
    except OSError:
        return 0.0
