"""GPU: ResNet-18 on CIFAR-shaped images, the trainer's fast path vs the plain fp32 DataLoader loop.

Measured on one CUDA device, each after warm-up steps and with the device synchronised:

- the plain loop: a map-style ``Dataset`` of uint8 images with per-sample to-tensor, normalise,
  random crop (padding 4) and flip, a ``DataLoader`` (shuffle, ``--workers`` processes, pinned
  memory), fp32 ResNet-18;
- the fast path, as ``distill_core`` trains on a GPU: the data set normalised once and resident
  on the device, batches by index with crop + flip on the device, bf16 autocast, channels_last
  (target: >= 2x the plain loop's images/s); and the same under ``torch.compile`` (compile
  time reported apart);
- four "fractional trials" (``--gpus-per-trial 0.25``): four processes training the fast path
  at once on the one GPU, against one such process alone;
- peak allocated GPU memory of each configuration.

Needs only torch and numpy (the model is defined here), so that it runs from a bare checkout:
``python -m benchmarks.gpu`` in the repository root. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks import common

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's
TRIALS = 4


# -------------------------------------------------------------------------------------------
# ResNet-18 for 32x32 images: torchvision's, with a 3x3 stride-1 stem and no max-pool (as
# distill_core's ``resnet18``), written out so that torchvision is not needed.


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------------------------
# The two input pipelines.


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 32x32 RGB images (``N,H,W,C``, as torchvision keeps CIFAR) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


class PerSample(Dataset):
    """The usual data set: ToTensor, Normalize, RandomCrop(32, padding=4), RandomHorizontalFlip per sample."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.x[i]).permute(2, 0, 1).float().div(255)
        x = F.pad((x - self.mean) / self.std, (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        x = x[:, top : top + 32, left : left + 32]
        return (x.flip(2) if torch.rand(()) < 0.5 else x), int(self.y[i])


def loader_batches(
    x: np.ndarray, y: np.ndarray, batch: int, workers: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(
        PerSample(x, y),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=True,
        persistent_workers=workers > 0,
        drop_last=True,
    )
    while True:
        for xb, yb in loader:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of every image of a batch, on its device."""
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), device=x.device)
    flip = torch.rand(n, device=x.device) < 0.5
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    n_idx = torch.arange(n, device=x.device)[:, None, None, None]
    c_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def resident_batches(
    x: np.ndarray, y: np.ndarray, batch: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalise once onto the device, then index batches there, as distill_core's trainer does."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    xs = (torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(255) - mean) / std
    ys = torch.from_numpy(y).to(device)
    while True:
        order = torch.randperm(len(ys), device=device)
        for start in range(0, len(ys) - batch + 1, batch):
            idx = order[start : start + batch]
            yield crop_flip(xs[idx]).contiguous(memory_format=torch.channels_last), ys[idx]


# -------------------------------------------------------------------------------------------
# Training steps and timing.


def trainer(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    fast: bool,
    compile_model: bool = False,
) -> Callable[[], None]:
    """One SGD step of ResNet-18 per call: fp32, or bf16 autocast + channels_last (``fast``)."""
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model: nn.Module = resnet18().to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        x, y = next(batches)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(
    step: Callable[[], None], warmup: int, steps: int, ready: Callable[[], Any] = lambda: None
) -> float:
    """Seconds of ``steps`` calls after ``warmup`` ones (and after ``ready()``), device synchronised."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(name: str, make: Callable[[], Callable[[], None]], args: Any) -> dict[str, Any]:
    """Images/s and peak allocated memory of one configuration; the first step's time apart."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step = make()
    step()  # compilation, cuDNN autotuning, DataLoader start-up
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    seconds = timed(step, args.warmup, args.steps)
    result = {
        "images_per_s": args.steps * args.batch / seconds,
        "first_step_s": first,
        "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
    }
    print(f"gpu: {name}: {result}", file=sys.stderr, flush=True)
    return result


def trial(rank: int, args: Any, barrier: Any, results: Any) -> None:
    """One fractional trial (its own process and data): the fast path's timed steps."""
    device = torch.device("cuda")
    x, y = images(args.images, seed=rank)
    step = trainer(resident_batches(x, y, args.batch, device), device, fast=True)
    results.put(timed(step, args.warmup, args.steps, ready=barrier.wait))


def trials_at_once(n: int, args: Any) -> float:
    """Wall seconds until ``n`` concurrent trial processes have each run ``args.steps`` steps."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=trial, args=(r, args, barrier, results)) for r in range(n)]
    for p in procs:
        p.start()
    seconds = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a trial process exited with code {p.exitcode}")
    return max(seconds)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=50_000, help="data set size (CIFAR-10: 50,000)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes of the plain loop")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        reason = f"no CUDA device is visible to torch {torch.__version__}"
        print(json.dumps({"benchmark": "gpu", "skipped": True, "reason": reason}))
        print(
            f"gpu benchmark skipped: {reason}; run it on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 0
    if args.quick:
        args.images, args.steps, args.warmup, args.no_compile = 4096, 5, 2, True
    start = common.start(args.threads)
    threads = start.threads
    device = torch.device("cuda")
    x, y = images(args.images)
    plain = measure(
        "fp32 DataLoader loop",
        lambda: trainer(loader_batches(x, y, args.batch, args.workers, device), device, fast=False),
        args,
    )
    fast = measure(
        "bf16 + channels_last + resident batches",
        lambda: trainer(resident_batches(x, y, args.batch, device), device, fast=True),
        args,
    )
    rows = [
        common.compare(
            "ResNet-18 training, CIFAR-shaped",
            "img/s",
            fast["images_per_s"],
            plain["images_per_s"],
            value_label="bf16 + channels_last + resident batches",
            baseline_label="fp32 DataLoader loop",
            target=("ratio", ">=", 2.0),
            fast=fast,
            plain=plain,
        ),
        common.compare(
            "peak allocated GPU memory",
            "MiB",
            fast["peak_allocated_mb"],
            plain["peak_allocated_mb"],
            value_label="fast path",
            baseline_label="fp32 DataLoader loop",
        ),
    ]
    if not args.no_compile:
        compiled = measure(
            "fast path + torch.compile",
            lambda: trainer(
                resident_batches(x, y, args.batch, device), device, fast=True, compile_model=True
            ),
            args,
        )
        rows.append(
            common.compare(
                "torch.compile on the fast path",
                "img/s",
                compiled["images_per_s"],
                fast["images_per_s"],
                value_label="compiled",
                baseline_label="fast path",
                compiled=compiled,
            )
        )
    alone, shared = trials_at_once(1, args), trials_at_once(TRIALS, args)
    rows.append(
        common.compare(
            f"{TRIALS} trials sharing the GPU vs 1 alone",
            "img/s",
            TRIALS * args.steps * args.batch / shared,
            args.steps * args.batch / alone,
            value_label=f"{TRIALS} at once, in total",
            baseline_label="1 alone",
            seconds_alone=alone,
            seconds_shared=shared,
        )
    )
    settings = {k: getattr(args, k) for k in ("batch", "images", "steps", "warmup", "workers")}
    common.write(args, "gpu", __doc__, rows, {**settings, "threads": threads}, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
