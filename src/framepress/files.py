"""Files in and out.

Output is atomic: a file is either absent, its old version, or complete — never half written, and no temporary
file outlives an error or an interrupt. Input paths are checked with one ``os.stat`` before any reader opens
them, so an empty path, a symlink loop or a FIFO (on which a decoder would block forever) is a clear error
naming the user's path.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SUFFIX_MAX = 32  # a longer "suffix" is not a format name; the temporary file goes without it


def stat_input(path: str | os.PathLike, missing: str) -> os.stat_result:
    """``os.stat`` of an input path, its failures said plainly: ``FileNotFoundError`` ("{missing}: path") when it
    does not exist, ``ValueError`` for an empty path, a symlink loop or a name too long, ``PermissionError``
    naming the path when it cannot be looked at."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text == "":
        raise ValueError(f"{missing}: the path is empty")
    try:
        return os.stat(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{missing}: {text}") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{missing}: {text} (a part of the path is not a folder)") from None
    except PermissionError:
        raise PermissionError(errno.EACCES, "permission denied (cannot look at it)", text) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{text} is a symlink loop (too many levels of symbolic links)") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise ValueError(f"{text}: file name too long") from None
        raise


def regular_file(path: str | os.PathLike, missing: str) -> Path:
    """``path`` checked to be a regular file (through symlinks): a folder, FIFO, socket or device is refused
    before anything opens it."""
    st = stat_input(path, missing)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{os.fspath(path)} is {describe(st)}, not a regular file")
    return Path(path)


def describe(st: os.stat_result) -> str:
    """What kind of file a stat result is, in words."""
    mode = st.st_mode
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_output(path: str | os.PathLike) -> None:
    """Refuse, naming ``path``, what would fail later under the temporary file's name (a folder, a FIFO or
    device, a name too long): callers may check up front, before the work whose result they write."""
    if os.fspath(path) == "":
        raise ValueError("the output path is empty")
    path = Path(path)
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        raise OSError(errno.ENAMETOOLONG, "file name too long", os.fspath(path))
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:  # the folders to be made: their first existing one
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is not a folder, so nothing can be written in it", os.fspath(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied (cannot write in this folder)", os.fspath(folder))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _renamed(exc, None, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file to write", os.fspath(path))
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"is {describe(st)}; will not replace it", os.fspath(path))


def _temp_path(path: Path) -> Path:
    """A fresh name beside ``path``, hidden, with its suffix (writers pick the format by it), and never longer
    than the folder allows, however long ``path``'s own name is."""
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= _SUFFIX_MAX else ""
    token = secrets.token_hex(8)
    room = _name_max(path.parent) - len(os.fsencode(f"..{token}{suffix}"))
    name = path.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return path.parent / f".{name}.{token}{suffix}"


def _renamed(exc: BaseException, tmp: Path | None, path: Path) -> BaseException:
    """The same error about ``path`` instead of the temporary file (or with ``path`` when it names none)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        names = {os.fspath(tmp)} if tmp is not None else set()
        if exc.filename is None or os.fspath(exc.filename) in names or tmp is None:
            base = next(c for c in type(exc).__mro__ if c.__module__ == "builtins")  # e.g. av's errors subclass these
            return base(exc.errno, exc.strerror or str(exc), os.fspath(path))
        return exc
    if tmp is not None and os.fspath(tmp) in str(exc) and type(exc) in (ValueError, TypeError, RuntimeError, OSError):
        return type(exc)(str(exc).replace(os.fspath(tmp), os.fspath(path)))
    return exc


@contextmanager
def atomic(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that read it still work) that replaces ``path``
    when the block ends, and is removed if the block raises or is interrupted. Errors name ``path``, never the
    temporary file."""
    check_output(path)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _renamed(exc, None, path.parent) from None
    tmp = None
    try:
        # The name is bound before the file exists, so an interrupt at any point leaves nothing the except misses.
        tmp = _temp_path(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        renamed = _renamed(exc, tmp, path)
        if renamed is exc:
            raise
        raise renamed from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a ``.safetensors`` file, checked against the file's size without reading its data:
    a ``ValueError`` naming the file says it is damaged (an unreadable header) or truncated (fewer bytes than
    the header promises)."""
    import json
    import struct

    path = Path(path)
    size = regular_file(path, "no such file").stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is damaged (truncated: {size} bytes, not even a safetensors header)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path} is damaged (truncated, or not safetensors: a header of {length} bytes in a file of "
                             f"{size})")
        try:
            header = json.loads(handle.read(length))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"{path} is damaged (unreadable safetensors header: {exc})") from None
    promised = 8 + length + max(ends, default=0)
    if size != promised:
        raise ValueError(f"{path} is damaged ({'truncated: ' if size < promised else ''}{size} bytes, its header "
                         f"promises {promised})")
    return header
