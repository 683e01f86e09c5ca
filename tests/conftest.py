import os

import torch

# The tests run tiny problems: one intra-op thread is fastest and keeps 2-core CI machines from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def device(request):
    """The core tests that take ``device`` run on every device present (a GPU machine runs the same suite)."""
    return torch.device(request.param)
