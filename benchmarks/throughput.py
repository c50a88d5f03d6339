"""Training throughput (images/s) of registered models, fp32 vs bf16 autocast on CUDA.

.venv/bin/python benchmarks/throughput.py --models cnn_small resnet20 --device cpu
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from distill_core import build_model


def images_per_second(
    name: str, device: torch.device, *, batch: int, size: int, channels: int, amp: bool, steps: int
) -> float:
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn_small", "resnet20", "resnet18"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, {args.channels}x{args.size}x{args.size}")
    for name in args.models:
        row = [
            f"{name:<10}",
            f"fp32 {images_per_second(name, device, batch=args.batch, size=args.size, channels=args.channels, amp=False, steps=args.steps):9.0f} img/s",
        ]
        if device.type == "cuda":
            bf16 = images_per_second(
                name,
                device,
                batch=args.batch,
                size=args.size,
                channels=args.channels,
                amp=True,
                steps=args.steps,
            )
            row.append(f"bf16 {bf16:9.0f} img/s")
        print("  ".join(row))


if __name__ == "__main__":
    main()
