"""Write-then-rename helpers, so a killed or failed run never leaves a half-written output.

Everything the recipe writes for a later stage to trust (data dirs, labels, teachers, students,
exports, reports) goes through these; fairseq writes its own checkpoints the same way.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary dir beside `final`; on success it replaces `final` in one rename.

    On an exception the temporary dir is removed and `final` is left as it was. Leftovers of a
    killed earlier attempt (one writer per output is assumed) are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the result is an ordinary output dir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_save(save: Callable[[str], object], path: str | Path) -> None:
    """Call `save(tmp_path)` for a temporary name beside `path`, then rename it into place.

    `save` may write a file or create a symlink there; on any failure `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # only the unique name is wanted: `save` creates the file
    try:
        save(tmp)
        if not os.path.islink(tmp):
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_save(write, path)


def atomic_copy(src: str | Path, dst: str | Path) -> bool:
    """Copy through a temporary file and a rename: `dst` is the old file or the new one, never half."""
    atomic_save(lambda tmp: shutil.copyfile(src, tmp), dst)
    return True


def make_fairseq_checkpoint_copies_atomic() -> None:
    """fairseq saves a checkpoint atomically (write `.tmp`, rename), then *copies* it onto
    `checkpoint_last.pt` / `checkpoint_best.pt` with PathManager.copy, in place. A full disk or a
    kill during that copy leaves a truncated `checkpoint_last.pt`: the file a resumed run trusts.
    Route local copies through `atomic_copy` instead (remote paths keep fairseq's behaviour)."""
    from fairseq.file_io import PathManager

    if getattr(PathManager.copy, "_atomic", False):
        return
    fairseq_copy = PathManager.copy

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in str(dst_path) or "://" in str(src_path):
            return fairseq_copy(src_path, dst_path, overwrite)
        return atomic_copy(src_path, dst_path)

    copy._atomic = True
    PathManager.copy = staticmethod(copy)
