"""Teacher targets cached on disk (`task.speed.teacher_cache=DIR`): the teacher runs once per
utterance instead of once per epoch and per student.

Layout of `DIR/<split>-<fingerprint>/`, one per (teacher, manifest, cropping, precision, the way its
positional conv runs), so the
students of one teacher share it (e.g. one run per growth operator, as stage 3 makes):

    meta.json      what the targets were made from (teacher and manifest sha256, crops, ...)
    index.npy      int64 [N + 1]: utterance i's frames are rows index[i]:index[i + 1]
    layer<k>.npy   float16 [frames, dim] for each cached teacher layer k, memory-mapped
    filled.npy     uint8 [N]: 1 once utterance i's rows are written

With `task.speed.share_teacher_cnn`, the student's input (the teacher's CNN features after its
layer norm) is just as fixed per crop, and a second cache of the same layout keeps it
(`cnn.npy`, `task.speed.cache_student_input`): a batch read from disk then runs the student's
Transformer and nothing else.

It fills as batches come by: a batch whose utterances are all filled is read from disk (in the
data loader's workers, through read-only memory maps); otherwise the teacher runs and its outputs are
written (`pwrite`, synced), rows first and flags after, so a run killed in between recomputes
those utterances and never reads half rows.
Space is reserved (fallocate) when the cache is made, so a full disk is an error then, not a
crash half-way through training.

What it changes, and why it is off by default:
- crops are fixed per utterance (seeded by `common.seed` and the utterance), not drawn per
  epoch: a cached target must belong to the same audio every time;
- targets are stored in fp16 (relative error ~1e-3);
- the loss covers the frames an utterance has on its own (the CNN's length formula); the
  boundary frame whose CNN window reaches into the batch's padding is left out;
- a target is the teacher's output in the batch its utterance was first seen in: with HuBERT
  Base's group-norm CNN, padding in that batch shifts it slightly (as it does uncached).

Disk cost: frames per hour x dim x 2 bytes x cached layers. HuBERT Base, layers 4/8/12, 50
frames/s: 180,000 x 768 x 2 x 3 = 0.83 GB per hour of audio (0.80 TB for LibriSpeech 960 h); the
student's input adds 180,000 x 512 x 2 = 0.18 GB per hour.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from fairseq_plugin.atomic_io import atomic_dir

FORMAT_VERSION = 1


class TeacherCacheError(ValueError):
    pass


def conv_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(kernel, stride) of each layer of a fairseq wav2vec 2.0 / HuBERT CNN front end (or of a
    Hugging Face teacher's, which says them itself)."""
    if hasattr(model, "conv_shapes"):
        return model.conv_shapes()
    return [(block[0].kernel_size[0], block[0].stride[0]) for block in model.feature_extractor.conv_layers]


def num_frames(num_samples, convs: list[tuple[int, int]]):
    """Frames the CNN makes of `num_samples` samples (an int or an integer array)."""
    n = num_samples
    for kernel, stride in convs:
        n = (n - kernel) // stride + 1
    return n


def file_sha256(path: str | Path) -> str:
    """A file's sha256; for a directory (a Hugging Face teacher), that of its files' names and sha256s."""
    path = Path(path)
    if path.is_dir():
        listing = [f"{f.relative_to(path)} {file_sha256(f)}" for f in sorted(path.rglob("*")) if f.is_file()]
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fixed_crop(source: torch.Tensor, max_samples: int, seed: int, index: int) -> torch.Tensor:
    """The same window of an utterance every epoch: a crop seeded by (seed, utterance)."""
    extra = source.numel() - max_samples
    if extra <= 0:
        return source
    start = int(np.random.default_rng([seed, index]).integers(0, extra + 1))
    return source[start:start + max_samples]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _file(key: int | str) -> str:
    """A teacher layer k is `layer<k>.npy`; a named entry (`cnn`) is `<name>.npy`."""
    return f"layer{key}.npy" if isinstance(key, int) else f"{key}.npy"


class TeacherCache:
    """One split's cached targets. `frames[i]`: rows utterance i gets (its cropped length, in frames).
    `layers` are teacher layers (ints), or names of other per-frame entries (`["cnn"]`)."""

    def __init__(self, root: str | Path, split: str, frames: np.ndarray, layers: list[int] | list[str], dim: int,
                 fingerprint: dict):
        meta = {"format": FORMAT_VERSION, "split": split, "layers": sorted(layers), "dim": dim, **fingerprint}
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / f"{split}-{digest}"
        self.layers = sorted(layers)
        self.dim = dim
        frames = np.asarray(frames, dtype=np.int64)
        if frames.size and frames.min() < 1:
            raise TeacherCacheError(f"teacher cache {self.dir}: utterance {int(frames.argmin())} is shorter than one "
                                    "frame; raise task.min_sample_size")
        if not (self.dir / "meta.json").exists():
            _create(self.dir, frames, self.layers, dim, meta)
        self._open()
        if not np.array_equal(np.diff(self.index), frames):
            raise TeacherCacheError(f"teacher cache {self.dir}: its index does not match the manifest's utterance "
                                    "lengths (edited in place?); delete the directory to rebuild it")

    def _open(self) -> None:
        self.index = np.load(self.dir / "index.npy")
        # Read-only maps: data loader workers, and runs that find the cache filled (one made once
        # and shared, perhaps on a read-only mount), never hold it open for writing.
        self.filled = np.load(self.dir / "filled.npy", mmap_mode="r")
        self.rows = {k: np.load(self.dir / _file(k), mmap_mode="r") for k in self.layers}
        self._writers = None

    def _files(self) -> dict:
        """Write handles of the rows and the flags, opened at the first write. Writes go through
        the files, not the maps: a store into fresh pages of a map faults page by page (0.4 GB/s
        on this project's CPU machine, against 2.6 GB/s for pwrite); every map of the files, in
        this process or a worker, reads the same page cache."""
        if self._writers is None:
            self._writers = {k: open(self.dir / _file(k), "r+b") for k in [*self.layers, "filled"]}
        return self._writers

    # Data loader workers reopen the files instead of receiving copies of the arrays.
    def __getstate__(self) -> dict:
        return {"dir": self.dir, "layers": self.layers, "dim": self.dim}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def frames(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.numpy()
        return torch.from_numpy(self.index[ids + 1] - self.index[ids])

    def has(self, ids: torch.Tensor) -> bool:
        return bool(self.filled[ids.numpy()].all())

    def read(self, ids: torch.Tensor, num_frames: int) -> dict[int, torch.Tensor]:
        """Targets of a batch, B x num_frames x dim fp16, zero past each utterance's own frames."""
        out = {}
        for k, rows in self.rows.items():
            batch = np.zeros((len(ids), num_frames, self.dim), dtype=np.float16)  # filled from the read-only map
            for b, i in enumerate(ids.tolist()):
                start, end = self.index[i], self.index[i + 1]
                batch[b, :end - start] = rows[start:end]
            out[k] = torch.from_numpy(batch)
        return out

    def write(self, ids: torch.Tensor, outputs: dict[int, torch.Tensor]) -> None:
        """Store a batch's teacher outputs (B x T x dim, T at least each utterance's frames)."""
        new = [(b, i) for b, i in enumerate(ids.cpu().tolist()) if not self.filled[i]]  # first seen wins
        if not new:
            return
        files = self._files()
        for k in self.layers:
            values = outputs[k].detach().to("cpu", torch.float16).numpy()
            file, header, row_bytes = files[k], self.rows[k].offset, self.dim * 2
            for b, i in new:
                start, end = self.index[i], self.index[i + 1]
                _pwrite_all(file.fileno(), values[b, :end - start], header + int(start) * row_bytes)
            os.fdatasync(file.fileno())  # rows reach the disk before the flags that vouch for them
        for _, i in new:
            os.pwrite(files["filled"].fileno(), b"\x01", self.filled.offset + i)

    def filled_fraction(self) -> float:
        return float(self.filled.mean()) if self.filled.size else 1.0


def _pwrite_all(fd: int, rows: np.ndarray, offset: int) -> None:
    """Write a C-contiguous array at `offset`; pwrite may write less than asked."""
    data = memoryview(np.ascontiguousarray(rows)).cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _create(directory: Path, frames: np.ndarray, layers: list[int], dim: int, meta: dict) -> None:
    """Make the cache files, reserved on disk, under a lock (data-parallel ranks make it once)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "meta.json").exists():
            return
        total = int(frames.sum())
        need = total * dim * 2 * len(layers)
        free = shutil.disk_usage(directory.parent).free
        if need > free:
            raise TeacherCacheError(
                f"teacher cache {directory}: needs {_gb(need)} ({total} frames x {dim} x {len(layers)} layers, fp16), "
                f"{_gb(free)} free; free space or point task.speed.teacher_cache at another disk")
        with atomic_dir(directory) as tmp:
            np.save(tmp / "index.npy", np.concatenate([[0], np.cumsum(frames)]).astype(np.int64))
            np.lib.format.open_memmap(tmp / "filled.npy", mode="w+", dtype=np.uint8, shape=(len(frames),)).flush()
            for k in layers:
                rows = np.lib.format.open_memmap(tmp / _file(k), mode="w+", dtype=np.float16, shape=(total, dim))
                header = rows.offset
                del rows
                with open(tmp / _file(k), "r+b") as f:
                    try:
                        os.posix_fallocate(f.fileno(), header, max(1, need // len(layers)))
                    except OSError as e:
                        raise TeacherCacheError(f"teacher cache {directory}: cannot reserve {_gb(need)}: {e}") from e
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
