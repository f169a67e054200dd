"""The official CIFAR python archives: download, verify, extract, read.

A split is read once into a uint8 tensor [N, 3, 32, 32]; nothing is decoded
per sample. Downloads and extractions go to a temporary name in ``data_dir``
and are renamed only once complete and verified, so a failure leaves nothing
half-written behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import safe_pickle


@dataclass(frozen=True)
class CifarSpec:
    name: str
    url: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    coarse_label_key: str | None = None


CIFAR10 = CifarSpec(
    name="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)

CIFAR100 = CifarSpec(
    name="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    coarse_label_key="coarse_labels",
)


@dataclass(frozen=True)
class CifarSplit:
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]
    coarse_labels: torch.Tensor | None  # int64 [N] (CIFAR-100 only)


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _missing_data_error(spec: CifarSpec, root: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{spec.name} not found: looked for the folder {root / spec.folder} and the archive "
        f"{root / spec.archive}. Set `download: true` to fetch it from {spec.url}, or put the "
        f"official python archive (or its extracted '{spec.folder}' folder) in {root}."
    )


def download_error(spec: CifarSpec, root: Path, reason: object) -> ConnectionError:
    """What could not be fetched from where, and how to place the file by hand (no network access)."""
    return ConnectionError(
        f"cannot download {spec.name} from {spec.url} ({reason}). Without network access, download that "
        f"file elsewhere and put it in {root} as {spec.archive} (md5 {spec.md5}), or put its extracted "
        f"'{spec.folder}' folder there; either is used as it is."
    )


def copy_with_progress(response, out, total: int | None, desc: str, chunk: int = 1 << 16) -> None:
    """Copy an HTTP response to ``out`` with a tqdm byte counter on stderr (tqdm comes with Lightning)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr) as bar:
        while block := response.read(chunk):
            out.write(block)
            bar.update(len(block))


def download_archive(spec: CifarSpec, root: Path, timeout: float = 60.0) -> Path:
    """Download ``spec.url`` to ``root/spec.archive`` and verify its md5 before keeping it."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.archive
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{spec.archive}.", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                copy_with_progress(response, out, int(length) if length else None, f"{spec.name} {spec.archive}")
        except (urllib.error.URLError, OSError) as err:  # no network, DNS failure, refused, reset, time-out
            raise download_error(spec, root, getattr(err, "reason", err)) from err
        got = md5sum(tmp)
        if got != spec.md5:
            raise RuntimeError(
                f"downloaded {spec.url} has md5 {got}, expected {spec.md5}; the file was discarded"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def extract_archive(spec: CifarSpec, archive: Path, root: Path) -> Path:
    """Extract ``archive`` into ``root/spec.folder`` via a temporary folder (no partial result)."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.folder}."))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise RuntimeError(f"cannot extract {archive}: {err}") from err
        extracted = tmp / spec.folder
        if not extracted.is_dir():
            raise RuntimeError(f"{archive} does not contain the folder '{spec.folder}'")
        os.replace(extracted, root / spec.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / spec.folder


def prepare(spec: CifarSpec, data_dir: str | Path, download: bool) -> Path:
    """Make ``data_dir/spec.folder`` exist; return it.

    A folder already there is used as it is. An archive already there is
    extracted as it is (its md5 is checked only when we downloaded it).
    """
    root = Path(data_dir).expanduser()
    folder = root / spec.folder
    if folder.is_dir():
        return folder
    archive = root / spec.archive
    if not archive.is_file():
        if not download:
            raise _missing_data_error(spec, root)
        archive = download_archive(spec, root)
    return extract_archive(spec, archive, root)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the CIFAR folder")
    try:
        with open(path, "rb") as f:
            return safe_pickle.load(f, encoding="latin1")
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RuntimeError(f"cannot read {path}: not a valid CIFAR pickle ({type(err).__name__}: {err})") from err


def read_split(spec: CifarSpec, folder: Path, train: bool) -> CifarSplit:
    images, labels, coarse = [], [], []
    for name in spec.train_files if train else spec.test_files:
        batch = _read_pickle(folder / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            images.append(data.reshape(len(data), 3, 32, 32))
            labels.append(np.asarray(batch[spec.label_key], dtype=np.int64))
            if spec.coarse_label_key:
                coarse.append(np.asarray(batch[spec.coarse_label_key], dtype=np.int64))
        except (KeyError, ValueError, TypeError) as err:
            raise RuntimeError(f"{folder / name} is not a {spec.name} batch: {err!r}") from err
    return CifarSplit(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        coarse_labels=torch.from_numpy(np.concatenate(coarse)) if coarse else None,
    )


def read_class_names(spec: CifarSpec, folder: Path) -> list[str]:
    return [str(n) for n in _read_pickle(folder / spec.meta_file)[spec.names_key]]
