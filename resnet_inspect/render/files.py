"""Writing output files (`-o`, `--png`, pictures): whole or not at all, and never a damaged device or link.

- ``-`` is standard output.
- A symbolic link is followed: its target is written, the link stays.
- A regular file (or a new one) is written to a temporary file beside it and renamed into place, so a reader
  sees the old file or the new one, never half of one. It keeps the existing file's mode, or gets the mode
  the umask gives a new file (like the shell's ``>``). A file with several hard links is rewritten in place
  instead, so every link sees the new content.
- A character device or a FIFO (``/dev/null``, a named pipe) is written directly: it is never replaced by a
  regular file, and a failed write (``/dev/full``) is an error. So is a path through /proc/*/fd or /dev/fd,
  such as ``/dev/stdout``, even when it leads to a regular file (the one the shell redirected output to).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from resnet_inspect.errors import BadInputError

STDOUT = "-"


def is_stdout(path: Path | str) -> bool:
    return str(path) == STDOUT


def _target(path: Path) -> Path:
    """Where a regular file's replacement goes: a symbolic link's final target (which may not exist yet)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _opens_a_descriptor(path: Path) -> bool:
    """Whether ``path`` leads through /proc/*/fd or /dev/fd (as /dev/stdout does): an open file of this process,
    such as the file the shell redirected standard output to, which must be written, never replaced."""
    current = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on nested links
        if str(current).startswith(("/proc/", "/dev/fd/")):
            return True
        if not current.is_symlink():
            return False
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return False


def _file_mode(path: Path) -> int | None:
    """``path``'s stat mode, or None when it does not exist."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


_RANDOM_PART = 8  # the characters tempfile puts between prefix and suffix
_TEMPORARY_SUFFIX = ".tmp"


def _temporary_file(directory: Path, name: str) -> tuple[int, str]:
    """A new temporary file beside ``name`` in ``directory`` (``mkstemp``'s descriptor and path).

    Its name is ``.NAME.XXXXXXXX.tmp``, with NAME shortened (never the target's own name) so that the whole
    stays within the directory's limit on a name's bytes (255 on common file systems): every legal target name,
    up to that limit, can be written.
    """
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    budget = max(limit - len(".") - len(".") - _RANDOM_PART - len(_TEMPORARY_SUFFIX), 1)
    encoded = os.fsencode(name)
    if len(encoded) > budget:
        name = os.fsdecode(encoded[:budget])  # a cut inside a character stays bytes (surrogateescape)
    return tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=_TEMPORARY_SUFFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: Path | None) -> None:
    """Fail before any work when ``path`` cannot be written (None and ``-`` always can).

    For a regular or new file the directory is probed by creating (and removing) a temporary file in it,
    as the write will: permission bits do not stop root, and places such as /proc refuse new files.
    """
    if path is None or is_stdout(path):
        return
    mode = _file_mode(path)  # through any links: /dev/stdout -> /proc/self/fd/1 -> a pipe or a terminal
    if mode is not None and stat.S_ISDIR(mode):
        raise BadInputError(f"cannot write {path}: it is a directory")
    if mode is not None and (not stat.S_ISREG(mode) or _opens_a_descriptor(path)):
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise BadInputError(f"cannot write {path}: not a regular file, character device or FIFO")
        if not os.access(path, os.W_OK):
            raise BadInputError(f"cannot write {path}: permission denied")
        return
    target = _target(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {path}: directory {directory} does not exist")
    if mode is not None and not os.access(target, os.W_OK):
        raise BadInputError(f"cannot write {path}: permission denied")
    try:
        descriptor, probe = _temporary_file(directory, target.name)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {directory} does not accept new files "
                            f"({exc.strerror or exc})") from exc
    os.close(descriptor)
    os.unlink(probe)


def same_file(first: Path | None, second: Path | None) -> bool:
    """Whether two output paths land on the same file (``-`` is never a file): the same device and inode when
    both exist (hard links, symbolic links, different spellings), else the same resolved path."""
    if first is None or second is None or is_stdout(first) or is_stdout(second):
        return False
    try:
        return os.path.samefile(first, second)  # st_dev and st_ino, through symbolic links
    except OSError:  # one of them does not exist yet
        return os.path.realpath(first) == os.path.realpath(second)


def check_png_name(path: Path | str | None, option: str = "--png") -> None:
    """Refuse to write PNG bytes to a file whose name does not say PNG (``erf.jpg``, ``erf.txt``): the file
    written, a symbolic link's final target, must end in ``.png``."""
    if path is not None and not is_stdout(path) and Path(os.path.realpath(path)).suffix.lower() != ".png":
        raise BadInputError(f"{option} writes a PNG image: {path} must end in .png")


def write_output(path: Path | str, data: str | bytes) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` as the module docstring says; BadInputError on failure."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if is_stdout(path):
        _write_stdout(payload)
        return
    path = Path(path)
    mode = _file_mode(path)  # through any links
    if mode is not None and stat.S_ISDIR(mode):
        raise BadInputError(f"cannot write {path}: it is a directory")
    try:
        if mode is not None and (not stat.S_ISREG(mode) or path.stat().st_nlink > 1 or _opens_a_descriptor(path)):
            _write_in_place(path, payload)  # opening the path itself follows its links, /proc/self/fd/N too
        else:
            _replace(_target(path), payload, mode)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_stdout(payload: bytes) -> None:
    if sys.stdout is None:
        raise BadInputError("cannot write the output: standard output is closed")
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(payload)
    else:
        sys.stdout.write(payload.decode("utf-8"))
    sys.stdout.flush()


def _write_in_place(target: Path, payload: bytes) -> None:
    """A device, a FIFO or a hard-linked file: open it as the shell's ``>`` would and write everything."""
    with open(target, "wb", buffering=0) as handle:  # unbuffered: an error surfaces at write, not at close
        view = memoryview(payload)
        while view:
            written = handle.write(view)
            view = view[written:]


def _replace(target: Path, payload: bytes, existing_mode: int | None) -> None:
    """A temporary file beside ``target``, fully written and synced, then renamed over it."""
    directory = target.parent if str(target.parent) else Path(".")
    descriptor, temporary = _temporary_file(directory, target.name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        mode = stat.S_IMODE(existing_mode) if existing_mode is not None else 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["STDOUT", "check_png_name", "check_writable", "is_stdout", "same_file", "write_output"]
