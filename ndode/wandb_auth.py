"""Whether W&B could authenticate without asking: an API key in ``$WANDB_API_KEY`` or ``~/.netrc``.

Standard library only, with no package-relative imports, so that ``scripts/wandb_dashboard.py``
can load this file by its path and refuse to start without a key before anything imports torch
(the ``ndode`` package does); the W&B mirror imports it as usual.
"""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

__all__ = ["have_api_key"]


def have_api_key() -> bool:
    """Whether an online W&B run could authenticate without asking (env var or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
