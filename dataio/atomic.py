"""Files written for a user appear under their final name only when complete, and a failed write is one line.

    write_atomic(path, lambda tmp: nib.save(img, str(tmp)))   # any writer: to a hidden temp name, then renamed
    save_png(path, array)                                     # a PNG the same way
    write_text(path, text)                                    # dataset.json, volumes.json, ...

The temporary file is `.<stem>.part<suffix>` in the same folder (the same file system, so os.replace is atomic;
the real suffix kept, so writers that pick a format by it, nibabel, still do). It is hidden: every lister of the
project skips names starting with "." (a run killed mid-write leaves at most that, and the next write of the
same file reuses its name). A write that fails (a full disk, ENOSPC, or a file size limit, EFBIG; a read-only
or forbidden folder, EROFS / EACCES) removes the temporary file and raises WriteError naming the final file:
a DataError, so the entry points print it as one `error: ...` line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dataio.spec import DataError

_WHY = {28: "the disk is full", 27: "the file is larger than this process may write (disk quota or ulimit -f)",
        30: "the folder is on a read-only file system", 13: "no permission to write there",
        122: "the disk quota is exceeded"}  # ENOSPC, EFBIG, EROFS, EACCES, EDQUOT


class WriteError(DataError):
    """An output file could not be written (one line naming it); nothing partial is left under its name. Callers
    that go on after a bad input (predict.py) stop on this one: the next file would fail the same way."""


def part_name(path: Path) -> Path:
    """The hidden temporary name of `path`: .<stem>.part<suffixes> (x.nii.gz -> .x.part.nii.gz)."""
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.lower().endswith(".nii.gz") else path.suffix
    return path.with_name(f".{name[:len(name) - len(suffix)]}.part{suffix}")


def write_atomic(path: str | Path, write: Callable[[Path], object], shown: str | Path | None = None) -> Path:
    """write(tmp) writes the file at a temporary name beside `path`; then it is renamed to `path`. WriteError
    (and no temporary file left) when the write or the rename fails with an OS error; it names `shown` when
    given (the final name of a file staged elsewhere, data.py slice), else `path`."""
    path = Path(path)
    tmp = part_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno is None:  # not the file system (e.g. PIL: "cannot write mode ..."): a bug, not the user's disk
            raise
        raise WriteError(f"{shown or path}: cannot write it ({_WHY.get(e.errno, e.strerror)}; "
                         f"[Errno {e.errno}] {e.strerror}); nothing partial was left there") from None
    except BaseException:  # an interrupt mid-write: the temporary file goes, the final name never appears
        _remove(tmp)
        raise
    return path


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # a read-only folder: there is nothing to remove either
        pass


def save_png(path: str | Path, image: np.ndarray | Image.Image, shown: str | Path | None = None) -> Path:
    """An array (or PIL image) as a PNG at `path`, atomically (write_atomic)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return write_atomic(path, lambda tmp: im.save(tmp, format="PNG"), shown)


def write_text(path: str | Path, text: str, shown: str | Path | None = None) -> Path:
    """A text file at `path`, atomically (write_atomic)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text), shown)
