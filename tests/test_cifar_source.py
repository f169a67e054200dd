"""Official-archive handling: download + md5, extraction, reuse of what is there, corrupt or hostile files."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import NoisyCIFAR10, cifar_source, safe_pickle
from fake_cifar import tar_folder, write_fake_cifar10


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory) -> Path:
    """A fake ``cifar-10-python.tar.gz`` (official layout) outside any data_dir."""
    src = tmp_path_factory.mktemp("archive_src")
    folder = write_fake_cifar10(src, n_train=100, n_test=20)
    return tar_folder(folder, src / "cifar-10-python.tar.gz")


def _spec(archive: Path, md5: str | None = None, url: str | None = None) -> cifar_source.CifarSpec:
    return dataclasses.replace(
        cifar_source.CIFAR10,
        url=url or archive.resolve().as_uri(),
        md5=md5 or cifar_source.md5sum(archive),
    )


@pytest.fixture
def use_spec(monkeypatch):
    """Make both the module constant and NoisyCIFAR10 use ``spec``."""

    def apply(spec: cifar_source.CifarSpec) -> None:
        monkeypatch.setattr(cifar_source, "CIFAR10", spec)
        monkeypatch.setattr(NoisyCIFAR10, "spec", spec)

    return apply


def _reference_images(folder: Path) -> np.ndarray:
    """Training images read with the plain (trusted) pickle module, as the official docs do."""
    parts = []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            parts.append(pickle.load(f, encoding="latin1")["data"])
    return np.concatenate(parts).reshape(-1, 3, 32, 32)


def test_md5sum_matches_hashlib_reference(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert cifar_source.md5sum(p) == "900150983cd24fb0d6963f7d28e17f72"  # RFC 1321 test vector


def test_download_verifies_md5_extracts_and_datamodule_reads_it(tmp_path, fake_archive, use_spec):
    use_spec(_spec(fake_archive))
    data_dir = tmp_path / "data"
    dm = NoisyCIFAR10(data_dir=str(data_dir), download=True, val_size=10)
    dm.prepare_data()
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert cifar_source.md5sum(data_dir / "cifar-10-python.tar.gz") == cifar_source.md5sum(fake_archive)
    dm.setup("fit")
    assert len(dm.clean_targets) == 100 and len(dm.train_indices) == 90 and len(dm.val_indices) == 10
    expected = _reference_images(fake_archive.parent / "cifar-10-batches-py")
    assert torch.equal(dm.training_set_images(), torch.from_numpy(expected))
    assert dm.class_names[9] == "truck"


def test_wrong_md5_raises_and_leaves_nothing(tmp_path, fake_archive, use_spec):
    use_spec(_spec(fake_archive, md5="0" * 32))
    data_dir = tmp_path / "data"
    dm = NoisyCIFAR10(data_dir=str(data_dir), download=True)
    with pytest.raises(RuntimeError, match=f"md5 {cifar_source.md5sum(fake_archive)}, expected {'0' * 32}"):
        dm.prepare_data()
    assert list(data_dir.iterdir()) == []  # no .part, no archive, no folder


def test_truncated_archive_raises_and_leaves_no_folder(tmp_path, fake_archive, use_spec):
    broken = tmp_path / "src" / "cifar-10-python.tar.gz"
    broken.parent.mkdir()
    data = fake_archive.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    use_spec(_spec(broken))  # md5 of the truncated file: the download itself "succeeds"
    data_dir = tmp_path / "data"
    with pytest.raises(RuntimeError, match="cannot extract .*cifar-10-python.tar.gz"):
        cifar_source.prepare(cifar_source.CIFAR10, data_dir, download=True)
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]  # no folder, no temp folder


def test_garbage_archive_in_data_dir_raises(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"this is not a gzip file" * 10)
    with pytest.raises(RuntimeError, match="cannot extract"):
        cifar_source.prepare(cifar_source.CIFAR10, tmp_path, download=False)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-python.tar.gz"]


def test_archive_without_the_expected_folder_raises(tmp_path):
    other = tmp_path / "src" / "something-else"
    other.mkdir(parents=True)
    (other / "readme.txt").write_text("hi")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tar_folder(other, data_dir / "cifar-10-python.tar.gz")
    with pytest.raises(RuntimeError, match="does not contain the folder 'cifar-10-batches-py'"):
        cifar_source.prepare(cifar_source.CIFAR10, data_dir, download=False)
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]


def test_archive_escaping_data_dir_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(RuntimeError, match="cannot extract"):
        cifar_source.prepare(cifar_source.CIFAR10, data_dir, download=False)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_archive_already_in_data_dir_is_used_without_download(tmp_path, fake_archive, use_spec):
    # a URL that cannot be fetched and a wrong md5: any download attempt would fail
    use_spec(_spec(fake_archive, md5="f" * 32, url=(tmp_path / "nowhere.tar.gz").as_uri()))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(fake_archive, data_dir / "cifar-10-python.tar.gz")
    dm = NoisyCIFAR10(data_dir=str(data_dir), download=True, val_size=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.clean_targets) == 100


def test_folder_already_there_is_used_without_md5_or_download(tmp_path, use_spec):
    use_spec(_spec(Path("/nonexistent.tar.gz"), md5="f" * 32, url=(tmp_path / "nowhere").as_uri()))
    write_fake_cifar10(tmp_path, n_train=50, n_test=10)
    dm = NoisyCIFAR10(data_dir=str(tmp_path), download=True, val_size=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.clean_targets) == 50 and len(dm.test_images()[1]) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]


def test_missing_data_without_download_says_where_and_how(tmp_path):
    dm = NoisyCIFAR10(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in msg
    assert str(tmp_path / "empty" / "cifar-10-python.tar.gz") in msg
    assert "download: true" in msg and cifar_source.CIFAR10.url in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        dm.setup("fit")  # setup alone (no prepare_data) fails the same way


# ------------------------------------------------------------------ pickles
@pytest.fixture
def fake_copy(tmp_path, fake_cifar10_dir) -> Path:
    shutil.copytree(fake_cifar10_dir / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    return tmp_path


def test_corrupt_pickle_is_a_clear_error(fake_copy):
    (fake_copy / "cifar-10-batches-py" / "data_batch_1").write_bytes(os.urandom(3000))
    dm = NoisyCIFAR10(data_dir=str(fake_copy), val_size=0)
    with pytest.raises(RuntimeError, match=r"cannot read .*data_batch_1: not a valid CIFAR pickle"):
        dm.setup("fit")


def test_pickle_without_cifar_keys_is_a_clear_error(fake_copy):
    with open(fake_copy / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"pixels": [1, 2, 3]}, f)
    with pytest.raises(RuntimeError, match=r"data_batch_2 is not a CIFAR-10 batch"):
        NoisyCIFAR10(data_dir=str(fake_copy), val_size=0).setup("fit")


class _Exploit:
    """Unpickling this runs ``os.system(command)`` with the plain pickle module."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_that_executes_code_is_refused(fake_copy):
    marker = fake_copy / "pwned"
    payload = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Exploit(f"touch {marker}")}
    with open(fake_copy / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(RuntimeError, match=r"refusing to load (os|posix)\.system"):
        NoisyCIFAR10(data_dir=str(fake_copy), val_size=0).setup("fit")
    assert not marker.exists()


def test_safe_pickle_still_reads_numpy_arrays_and_containers():
    obj = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": [1, "x", (2.5, None)], "c": np.float32(3)}
    for protocol in (2, 4, 5):
        back = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
        assert np.array_equal(back["a"], obj["a"]) and back["a"].dtype == np.int64
        assert back["b"] == [1, "x", (2.5, None)] and back["c"] == np.float32(3)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        safe_pickle.loads(pickle.dumps(eval))


# ------------------------------------------------------------------- downloading
def test_download_without_network_says_what_from_where_and_where_to_put_it(tmp_path, monkeypatch):
    """A machine without network access: DNS fails as ``urlopen`` reports it (URLError around a gaierror)."""
    import socket
    import urllib.error

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(cifar_source.urllib.request, "urlopen", no_network)
    data_dir = tmp_path / "data"
    with pytest.raises(ConnectionError) as err:
        cifar_source.prepare(cifar_source.CIFAR10, data_dir, download=True)
    message = str(err.value)
    for part in ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "Name or service not known",
                 f"put it in {data_dir} as cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                 "'cifar-10-batches-py' folder"):
        assert part in message, (part, message)
    assert list(data_dir.iterdir()) == []  # no partial download left behind


def test_download_over_http_shows_a_progress_bar(tmp_path, fake_archive, use_spec, capsys):
    """A real HTTP download from a local server: the bytes arrive, md5-checked, with a byte counter."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(fake_archive.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        use_spec(_spec(fake_archive, url=url))
        data_dir = tmp_path / "data"
        cifar_source.download_archive(cifar_source.CIFAR10, data_dir)
    finally:
        server.shutdown()
        server.server_close()
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == fake_archive.read_bytes()
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    size_kb = fake_archive.stat().st_size / 1024
    assert bar.startswith("CIFAR-10 cifar-10-python.tar.gz: 100%"), bar
    assert f"{size_kb:.1f}k/{size_kb:.1f}k" in bar or f"{size_kb:.0f}k/{size_kb:.0f}k" in bar, (bar, size_kb)
