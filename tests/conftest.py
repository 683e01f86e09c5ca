import os

import torch

# The tests run tiny problems: one intra-op thread is fastest and keeps 2-core CI machines from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")
