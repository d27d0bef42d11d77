"""Small file helpers: atomic writes (nothing half-written is ever left behind), output checks and hashing.

Every file lapeval writes goes through :func:`atomic_path`: the bytes go to a temporary file beside the
target (``.<name>.<pid>.<random><suffix>``), which is renamed onto the target in one step once complete. A
failure — a full disk, a read-only file system, Ctrl-C — removes the temporary file (and the folders the
write created) and raises :class:`OutputError`, a one-line :class:`~lapeval.errors.LapevalError` naming
the path, what the system said and the fix. A temporary file left by a process that was killed outright
(SIGKILL) is swept by the next write of the same target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import LapevalError, OutputError

_FIX = {
    errno.ENOSPC: "free space there (or choose another output location) and rerun: finished work is kept",
    errno.EDQUOT: "free space within your quota (or choose another output location) and rerun: finished work is kept",
    errno.EROFS: "the file system is read-only: choose a writable output location",
    errno.EACCES: "no permission to write there: choose a writable output location",
    errno.EPERM: "no permission to write there: choose a writable output location",
    errno.EISDIR: "it is a directory: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another output location",
    errno.ENAMETOOLONG: "shorten the path",
}


def output_error(path, exc: OSError, what: str = "", verb: str = "write", fix: str | None = None) -> OutputError:
    """The one-line :class:`OutputError` for an ``OSError`` met while writing ``path``."""
    code = exc.errno
    name = errno.errorcode.get(code, "") if code else ""
    said = exc.strerror or str(exc)
    fix = fix or _FIX.get(code, "check the output location and rerun")
    where = f"{what} {path}" if what else str(path)
    err = OutputError(f"cannot {verb} {where}: {said}{f' ({name})' if name else ''}; {fix}")
    err.errno, err.filename = code, str(path)
    return err


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path, what: str = "", directory: bool = False) -> Path:
    """Before an expensive step: can ``path`` (a file, or with ``directory=True`` a folder) be written?
    Nothing is created; a probe file is made and removed in the nearest existing folder. Raises
    :class:`OutputError` naming the path when not (a directory where a file is wanted, a file on the way,
    a read-only or full file system, no permission)."""
    path = Path(path)
    if not directory and path.is_dir():
        raise output_error(path, OSError(errno.EISDIR, os.strerror(errno.EISDIR)), what)
    if directory and path.exists() and not path.is_dir():
        raise output_error(path, OSError(errno.ENOTDIR, "it exists and is a file"), what, fix="give a folder path")
    base = _nearest_existing(path if directory else path.parent)
    if not base.is_dir():
        raise output_error(path, OSError(errno.ENOTDIR, f"{base} is a file"), what)
    try:
        fd, probe = tempfile.mkstemp(prefix=".lapeval-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(path, e, what) from None
    return path


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _sweep_stale(path: Path) -> None:
    """Remove temporary files of ``path`` left by killed processes of this host (their pid is gone)."""
    host = socket.gethostname()
    try:
        candidates = list(path.parent.glob(f".{path.name}.{host}-*.*"))
    except OSError:
        return
    for tmp in candidates:
        pid = tmp.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; returns them (deepest last) for cleanup on failure."""
    made = []
    p = path.parent
    while not p.exists():
        made.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OSError(errno.ENOTDIR, f"{p} is a file")
    for d in reversed(made):
        d.mkdir(exist_ok=True)
    return made


def _commit(tmp: Path, path: Path) -> None:
    """Make the finished temporary file the target: its bytes on disk, then one rename."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", what: str = ""):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step. An
    ``OSError`` on the way (full disk, read-only, ``path`` a directory) becomes a one-line
    :class:`OutputError`; the temporary file and the folders made for it are removed on any failure."""
    path = Path(path)
    if path.is_dir():
        raise output_error(path, OSError(errno.EISDIR, os.strerror(errno.EISDIR)), what)
    made: list[Path] = []
    tmp = None
    ok = False
    try:
        try:
            made = _make_parents(path)
            _sweep_stale(path)
            fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix or path.suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
        except OSError as e:
            raise output_error(path, e, what) from None
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
            _commit(tmp, path)
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            raise output_error(path, e, what) from None
        ok = True
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not ok:
            for d in made:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(x):
    """What JSON can hold: NaN → None (JSON has no NaN), non-string keys → str, recursively."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as a safetensors file, atomically and **byte-reproducibly**: the same tensors and
    metadata give the same bytes (and sha256) in any process. The safetensors library lays the data out
    deterministically but writes its JSON header from a hash map, whose key order changes from run to run;
    the header is re-serialised here with sorted keys (the format allows any order, padded with spaces to a
    multiple of 8 bytes), the data bytes untouched."""
    import struct

    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    return write_bytes(path, struct.pack("<Q", len(text)) + text + raw[8 + n :])


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`write_bytes` (torch's own file writer turns a full disk into a
    RuntimeError; here it is an ``OSError`` like every other write)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


# ---- names from outside as path components ---------------------------------------------------------
class UnsafePathError(LapevalError, ValueError):
    """A path built from a name (a task, a model, a grid cell folder) that would leave its output folder."""


# What a terminal obeys or hides rather than shows: C0 controls, DEL, C1 controls (8-bit CSI/OSC ...),
# bidi marks, overrides and isolates, zero-width and invisible format characters, line and paragraph
# separators, tag characters, lone surrogates. Explicit ranges, so that names do not change with Python's
# Unicode version.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                      "\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]")
_UNSAFE = re.compile(r'[/\\:*?"<>|]|' + _CONTROL.pattern)  # also what Windows refuses in a file name
_HASH_LEN = 12  # hex digits of sha256 kept (48 bits)
_HASHED = re.compile(rf"~[0-9a-f]{{{_HASH_LEN}}}\Z")  # the suffix safe_name adds


def printable(text) -> str:
    """``str(text)`` with every control character (see ``_CONTROL``: ESC, BEL, CR, C1 CSI, bidi overrides,
    zero-width ...) written as a Python escape (``\\x1b``, ``\\u202e``), everything else unchanged: text
    read from a file is shown, never obeyed by the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def dumps_printable(obj, **kwargs) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)`` with the control characters JSON leaves raw (DEL,
    C1, bidi overrides, zero-width ...) written as ``\\uXXXX`` escapes: the same JSON, safe on a terminal."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)  # escapes C0 inside strings; indent newlines stay
    return _CONTROL.sub(lambda m: m.group() if m.group() < " " else json.dumps(m.group())[1:-1], text)


def safe_name(text: str, max_len: int = 100) -> str:
    """Any task, model, metric or label text as ONE file or folder name, deterministically.

    The result holds no ``/`` or ``\\``, no character Windows refuses (``:*?"<>|``), no control character
    (:func:`printable`), does not start with a dot (so it is never ``.``, ``..`` or hidden), is not empty
    and takes at most ``max_len`` bytes in UTF-8 (file systems count bytes: 255 at most). A name that
    already is all that comes back unchanged (``set=p_max__fr``, ``flores_ppl_fr``). Any other gets its
    unsafe characters and leading dots replaced by ``_``, is cut to a readable prefix, and ends in ``~``
    plus 12 hex digits of the sha256 of the original text. A name that itself ends like that is hashed
    too, so distinct inputs give distinct outputs (up to a 48-bit hash collision)."""
    if max_len < _HASH_LEN + 8:
        raise ValueError(f"safe_name: max_len={max_len} leaves no room for a name (at least {_HASH_LEN + 8})")
    text = str(text)
    clean = _UNSAFE.sub("_", text)
    stripped = clean.lstrip(".")
    clean = "_" * (len(clean) - len(stripped)) + stripped
    if clean == text and text and len(text.encode("utf-8")) <= max_len and not _HASHED.search(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    prefix = clean.encode("utf-8")[: max_len - _HASH_LEN - 1].decode("utf-8", "ignore")  # whole characters
    return f"{prefix or '_'}~{digest}"


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed; a relative path is taken under ``root``), checked to be
    ``root`` itself or below it: a one-line :class:`UnsafePathError` naming both when it is not."""
    base = Path(root).resolve()
    try:
        resolved = (base / path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UnsafePathError(f"{what} {printable(path)} under {base} cannot be resolved ({e})") from None
    if not resolved.is_relative_to(base):
        raise UnsafePathError(
            f"{what} {printable(path)} resolves to {printable(resolved)}, outside the output folder {base}: "
            "refusing to use it (a name holding '..' or '/', or a symlink out of the folder)"
        )
    return resolved


def markdown_text(text) -> str:
    """Any name (a model, task, metric, label) as literal text in a markdown table cell or heading: ``\\``,
    ``|`` escaped, ``&``, ``<``, ``>`` as HTML entities (no tag, no broken table), control characters and line
    breaks written as escapes (:func:`printable`). Ordinary names come back unchanged."""
    import html

    text = str(text).replace("\\", "\\\\")
    return html.escape(printable(text), quote=False).replace("|", "\\|")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell as a spreadsheet shows it, never runs it: a string starting with ``=``, ``+``, ``-``, ``@``,
    tab or CR gets a leading ``'`` (a lone ``-``, lapeval's "no language", is no formula and stays), and its
    control characters are written as escapes (:func:`printable`; Python's csv module would leave a CR
    unquoted, splitting the row); anything else, numbers included, comes back unchanged."""
    if not isinstance(value, str):
        return value
    return ("'" if value != "-" and value.startswith(_FORMULA_START) else "") + printable(value)
