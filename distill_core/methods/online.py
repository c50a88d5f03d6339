"""Shared parts of the online methods (dml, pcl, dkel): peers, EMA, side-effect-free forwards."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from distill_core.methods import Method


class Peers(Method):
    """Base of the online methods: ``method.peers`` students trained together, no stored teacher."""

    has_peers = True

    def architectures(self) -> list[str]:
        return self.cfg.method.peer_models or [self.cfg.model.name] * self.cfg.method.peers

    def eval_models(self) -> dict[str, nn.Module]:
        return {f"peer{i}": net for i, net in enumerate(self.nets)}


@torch.no_grad()
def ema_(targets: list[torch.Tensor], sources: list[torch.Tensor], decay: float) -> None:
    """In place, fused over all tensors: ``t = decay * t + (1 - decay) * s``."""
    torch._foreach_lerp_(targets, sources, 1.0 - decay)


@torch.no_grad()
def forward_keeping_stats(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` in its current mode, without touching its buffers (batch-norm running statistics).

    DML recomputes a peer's outputs after its update; a plain second forward in train mode would
    count the batch twice in the running statistics. Cloned buffers absorb that update instead.
    """
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    return functional_call(net, buffers, (x,), strict=False)
