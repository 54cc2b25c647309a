"""Seeds, devices and the cost meters (wall time, peak memory) every stage reports."""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import platform
import random
import resource
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed

from transferlab.errors import ConfigError
from transferlab.startup import without_compiler


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for DataLoader shuffling.

    CPU runs with the same seed, thread count and params give the same metrics. GPU kernels
    are not all deterministic; we do not force them (it costs speed), and say so in the README.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def configure_runtime(
    num_threads: int,
    device: torch.device | None = None,
    *,
    channels_last: bool | str = "auto",
    workers: int = 0,
    compiles: bool = False,
) -> None:
    """Thread count and, on CPU, deterministic algorithms.

    Reductions split across threads add in an order that depends on the thread count, so
    bit-identical results need the same count: ``base.num_threads`` fixes it (0 leaves
    torch's default, the number of cores). Deterministic algorithms cost little on CPU; on
    CUDA they would cost speed and need cuBLAS settings, so they are left off there.

    ``compiles``: whether this process will call ``torch.compile``. A process that does not
    never loads torch's compiler stack (:func:`transferlab.startup.without_compiler`).
    """
    global _CHANNELS_LAST
    if not compiles:
        without_compiler()
    _CHANNELS_LAST = channels_last
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif workers > 0 and (device is None or device.type == "cpu"):
        # DataLoader workers take cores too: one torch thread per remaining core, since the
        # benchmark measures the oversubscribed setting slower ("workers and threads")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    if device is None or device.type == "cpu":
        if compiles:
            torch.use_deterministic_algorithms(True, warn_only=True)  # the compiler's flag too
        else:
            torch._C._set_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU. Asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"base.device: {name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"base.device: {name!r} requested but this machine has no CUDA device; use auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"base.device: {name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader worker processes for ``num_workers: auto`` (a number is taken as given).

    On CUDA: one per core but one (at most 8), so decoding and augmentation keep the GPU fed
    while the main process drives it. On CPU: none. The forward and backward passes already
    use every core through torch's threads, and the benchmark's "workers and threads" table
    (bench/results/) measures a worker process there as no faster; extraction still overlaps
    decoding with the forward pass, in a thread (transferlab.features.store.prefetch).
    """
    if setting != "auto":
        return int(setting)
    if device.type == "cuda":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 0


# base.channels_last, set once per process by configure_runtime.
_CHANNELS_LAST: bool | str = "auto"


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of images and convolution weights (``base.channels_last``). ``auto``:
    channels-last on CPU, where the benchmark measures it faster for both training and
    inference (the "levers" table of bench/results/cpu-2cores.md); contiguous on CUDA, where
    it has not been measured here (the GPU profile in the README turns it on: tensor cores
    want channels-last under autocast)."""
    if _CHANNELS_LAST == "auto":
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    return torch.channels_last if _CHANNELS_LAST else torch.contiguous_format


M = TypeVar("M", bound=torch.nn.Module)
T = TypeVar("T")


def place(module: M, device: torch.device) -> M:
    """``module`` on ``device`` in the memory format :func:`memory_format` picks for it."""
    module.to(device)
    return module.to(memory_format=memory_format(device))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (each DVC stage is its own process)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def peak_gpu_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version: the environment behind a number.

    Read from each distribution's metadata headers alone, with the e-mail header parser
    ``dist.metadata`` itself uses: ``dist.metadata`` parses the whole file, long description
    included, twice per distribution (name, then version), which cost up to 0.4 s of every
    stage's start-up for ~170 distributions (cProfile)."""
    out = {}
    headers = email.parser.HeaderParser()
    for dist in importlib.metadata.distributions():
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        meta = headers.parsestr(text) if text is not None else dist.metadata
        if meta["Name"]:
            out[meta["Name"].lower()] = meta["Version"]
    return dict(sorted(out.items()))


def environment() -> dict[str, Any]:
    """What the numbers were measured on, recorded next to them: bit-identical results need
    the same packages, the same CPU instruction set (torch picks kernels by it) and the same
    thread count."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # settings that change which kernels run, and so the bits of a backward pass
        "isa_overrides": {
            k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ
        },
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "packages": installed_packages(),
    }


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes torchrun started (one, without torchrun).

    ``rank`` numbers every process of the job, across machines; ``local_rank`` those of this
    machine (it picks the GPU); ``local_size`` how many share this machine's cores.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes what the job writes once: summaries, metrics, checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if self.size <= 1:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out


def init_ranks(device: torch.device, num_threads: int = 0) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up (environment RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT), with nccl on GPUs and gloo on CPUs, and pick this rank's device: its
    own GPU on CUDA (``cuda:LOCAL_RANK``). Without torchrun: one rank, the device unchanged.
    On CPU each process then takes its share of the cores for torch's threads (unless
    ``num_threads``, base.num_threads, fixes the count), so N ranks on one machine do not
    oversubscribe it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return Ranks(), device
    ranks = Ranks(
        rank=int(os.environ["RANK"]),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))),
    )
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if device.type == "cpu" and num_threads <= 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_size))
    return ranks, device


def close_ranks(ranks: Ranks) -> None:
    if ranks.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class Plan:
    """The line a training run prints before the wait: its images, batches and epochs, the
    measured seconds of its first batches, and the training time they imply.

    The first batch pays one-time costs (memory, kernel selection, the first decodes), so it
    is timed apart and the estimate uses the next ``batches`` (or what the epoch has): the
    first epoch costs the first batch plus the others at the measured pace, each later epoch
    every batch at that pace. Validation passes are not in it (they are forward only).
    Training runs (transferlab.training.loop.fit) and extraction print one.
    """

    def __init__(
        self,
        label: str,
        images: int,
        batches: int | None,
        epochs: int,
        sample: int = 3,
        what: str = "training images",
        unit: str = "epoch",
    ) -> None:
        self.label, self.images, self.epochs, self.what, self.unit = label, images, epochs, what, unit
        self.batches, self.sample = batches or 0, sample  # None: from the first batch's size
        self.want = min(1 + sample, batches) if batches else 0
        self.count, self.first, self.done = 0, 0.0, False

    def __call__(self, seen: int, seconds: float) -> None:
        """``seen`` images so far, ``seconds`` since the work started."""
        if self.done:
            return
        self.count += 1
        if self.count == 1:
            self.first = seconds
            if not self.batches:
                self.batches = max(1, -(-self.images // max(seen, 1)))
                self.want = min(1 + self.sample, self.batches)
        if self.count >= self.want:
            self.done = True
            pace = (seconds - self.first) / (self.count - 1) if self.count > 1 else seconds
            total = self.first + pace * (self.batches * self.epochs - 1)
            print(self.line(pace, total), flush=True)

    def line(self, pace: float, total: float) -> str:
        return (
            f"plan: {self.label}: {self.images:,} {self.what}, {self.batches:,} batches"
            + (f"/{self.unit} x {self.epochs} {self.unit}s" if self.epochs > 1 else "")
            + f"; first batch {self.first:.2f} s, then {pace:.2f} s/batch "
            f"(over {max(self.count - 1, 1)}): about {total:,.{0 if total >= 100 else 1}f} s of {'training' if self.what == 'training images' else 'work'}"
        )
