"""The one timing helper every benchmark uses, plus the machine description.

Timing on a shared CPU is noisy, so a comparison is always measured side by
side: in every repetition each contender runs once (in a rotating order), so a
burst of load from another process hits all of them alike. Each contender is
first calibrated to a number of calls per sample (``target_s`` of work), then
warmed up; the reported figure is the median over repetitions of the time per
call. Thread CPU time is recorded next to wall time: it excludes the time the
scheduler gave to other processes, so it is the steadier of the two under
contention.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Timing", "interleaved", "machine_info", "CallCounter", "peak_rss_reset", "peak_rss_bytes", "HostReads",
           "device_of", "sync"]


@dataclass
class Timing:
    """Seconds per call: median over repetitions (wall and this thread's CPU time)."""

    wall: float
    cpu: float
    wall_samples: list
    calls_per_sample: int

    @property
    def spread(self) -> float:
        """Interquartile range of the wall samples over their median (a noise indicator)."""
        s = sorted(self.wall_samples)
        if len(s) < 4:
            return (s[-1] - s[0]) / self.wall if self.wall else 0.0
        q = statistics.quantiles(s, n=4)
        return (q[2] - q[0]) / self.wall if self.wall else 0.0


def device_of(sizes: dict) -> torch.device:
    """The device a benchmark runs on: ``sizes["device"]`` (``scripts/gpu_check.py`` sets ``cuda``), else the CPU."""
    return torch.device(sizes.get("device", "cpu"))


def sync() -> None:
    """Wait for queued CUDA work, so a timed call ends when its kernels do (nothing to wait for on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class HostReads:
    """Counts reads of a tensor's value from the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``...)
    while the ``with`` block runs. On CUDA each one is a host synchronisation: the host waits for the device.

    ``with HostReads() as reads: step()`` then ``reads.total`` (and ``reads.counts`` by method).
    """

    METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")

    def __enter__(self):
        import collections

        self.counts = collections.Counter()
        self._saved = {name: getattr(torch.Tensor, name) for name in self.METHODS}
        for name, original in self._saved.items():
            def counted(t, *args, _original=original, _name=name, **kwargs):
                self.counts[_name] += 1
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _calibrate(fn: Callable[[], object], target_s: float, max_calls: int) -> int:
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    if once >= target_s:
        return 1
    return int(max(1, min(max_calls, target_s / max(once, 1e-9))))


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    reps: int = 7,
    warmup: int = 1,
    target_s: float | None = 0.05,
    max_calls: int = 10_000,
) -> dict[str, Timing]:
    """Time every function in ``fns`` side by side; returns ``{name: Timing}`` (seconds per call).

    ``target_s=None`` skips the calibration: one call per sample (for calls
    that take long anyway; the warm-up repetitions still run).
    """
    names = list(fns)
    if target_s is None:
        calls = dict.fromkeys(names, 1)
    else:
        calls = {n: _calibrate(fns[n], target_s, max_calls) for n in names}
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(warmup + reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:  # rotate, so no contender always runs first
            fn, m = fns[n], calls[n]
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(m):
                fn()
            sync()
            w1, c1 = time.perf_counter(), time.thread_time()
            if r >= warmup:
                wall[n].append((w1 - w0) / m)
                cpu[n].append((c1 - c0) / m)
    return {n: Timing(statistics.median(wall[n]), statistics.median(cpu[n]), wall[n], calls[n]) for n in names}


class CallCounter(torch.nn.Module):
    """``func`` with a call counter, for peers that report no statistics.

    An ``nn.Module`` so that adjoint implementations find ``func``'s
    parameters through it. Timed runs use the bare ``func`` wherever the count
    can be taken in a separate, untimed run.
    """

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y, *args):
        self.n += 1
        return self.func(t, y, *args)


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def peak_rss_reset() -> int | None:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0) and return the current RSS in bytes (None if unsupported)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def peak_rss_bytes() -> int | None:
    """Peak RSS since the last :func:`peak_rss_reset`, in bytes."""
    hwm = _status_kib("VmHWM")
    return None if hwm is None else hwm * 1024


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, threads, versions, current load."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdiffeq": _version("torchdiffeq"),
        "torchode": _version("torchode"),
        "scipy": _version("scipy"),
        "numpy": _version("numpy"),
        "loadavg_1m": round(load[0], 2),
        "loadavg_5m": round(load[1], 2),
    }


def gradients_then_times(step, variants, params, sizes: dict) -> tuple[dict, dict]:
    """Run ``step(lib, mode)`` once per variant, keeping the flattened gradient of ``params`` after each; then time
    every variant side by side (:func:`interleaved`, one call per sample). Returns ``(grads, timings, host_reads)``,
    keyed by the variant, by ``"lib mode"`` and by the variant (host reads of the first, untimed call)."""
    grads, reads = {}, {}
    for v in variants:
        with HostReads() as r:
            step(*v)
        reads[v] = r.total
        grads[v] = torch.cat([p.grad.reshape(-1) for p in params])
    tm = interleaved({f"{lib} {mode}": (lambda v=(lib, mode): step(*v)) for lib, mode in variants},
                     reps=sizes["reps"], warmup=sizes["warmup"], target_s=None)
    return grads, tm, reads


def variant_value(df, variant: str, col: str) -> float:
    """Column ``col`` of the row whose ``variant`` is ``variant`` in a benchmark's results (NaN if absent)."""
    r = df.loc[df.variant == variant, col]
    return float(r.iloc[0]) if len(r) else float("nan")
