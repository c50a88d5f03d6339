"""Peer collaborative learning (Wu & Gong, AAAI 2021), the baseline of DKEL (seed 002).

One multi-branch network (shared trunk, ``method.peers`` branches, a fused ensemble head) and
its temporal mean, trained as ``online.BranchMethod`` describes. PCL's term on the temporal
mean, for branch i, is the mean KL to the temporal-mean outputs of the OTHER branches::

    PM_i = mean_{j != i} KL(tm_j || s_i) * tau^2

(``PMLoss`` over ``[mean_label_j for j != i]`` in ``src/losses/loss_wrapper.py`` of the official
DKEL code, which with ``ensemble_weight = 0`` is PCL; the DKEL paper reproduced PCL itself, as
PCL's code is not public). The temporal mean starts as a plain copy of the student
(``deepcopy(model)`` in the official ``main.py``), without DKEL's CE steps.

Reads ``method.peers`` (>= 2), ``method.temperature`` (the paper: 3), ``dkel.ema_decay``,
``dkel.rampup`` and ``dkel.rampup_epochs``.
"""

from __future__ import annotations

import torch

from distill_core.losses import kd_kl
from distill_core.methods import METHODS
from distill_core.methods.online import BranchMethod


def peer_mean_term(student: torch.Tensor, mean: torch.Tensor, i: int, tau: float) -> torch.Tensor:
    """``mean_{j != i} KL(mean_j^tau || student^tau) * tau^2``; ``mean`` is ``(m, B, K)``."""
    others = [j for j in range(len(mean)) if j != i]
    return torch.stack([kd_kl(student, mean[j], tau) for j in others]).mean()


@METHODS.register("pcl")
class PCL(BranchMethod):
    """Peer collaborative learning: branch CE, KL to the ensemble head, KL to the other temporal-mean branches."""

    def peer_mean_term(
        self, student: torch.Tensor, mean: torch.Tensor, i: int, epoch: int
    ) -> torch.Tensor:
        return peer_mean_term(student, mean, i, self.cfg.method.temperature)
