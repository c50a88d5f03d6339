"""DKEL, decoupled knowledge with ensemble learning (Shao et al. 2023; seed 002): PCL + two ideas.

Followed: the official code, shaoeric/Decoupled-Knowledge-with-Ensemble-Learning-for-Online-
Distillation (files named below), except its two defects (see ``online.rampup_weight`` and
``online.BranchMethod``). Training is PCL's (``online.BranchMethod``); for branch i in epoch e
(counted from 0) the term on the temporal mean mixes an ensemble KL with PCL's individual KLs
(``src/losses/loss_wrapper.py``)::

    PM_i = w(e) * KL(mean_{j != i} tm_j || s_i) + (1 - w(e)) * mean_{j != i} KL(tm_j || s_i)

    w(e) = exp(-beta * e), set to 0 when <= 0.01   dkel.decay = exp (the paper's method)
         = 0.5 * (1 + cos(pi * e / E))             dkel.decay = cos     (E = run.epochs)
         = 1 - e / E                               dkel.decay = linear

The ensemble averages the other branches' temporal-mean *logits*. cos and linear are the
paper's comparison schedules (not in the code) and ignore beta.

1. *Decoupled initialisation* (``Trainer.init_mean_model`` in ``src/trainer.py``): the temporal
   mean starts as a copy of the student, then takes ``dkel.init_steps`` SGD steps (no momentum,
   weight decay 5e-4, lr ``dkel.init_lr``, default ``optim.lr / 100``) on the mean of the branch
   cross-entropies, each branch on its own view. The code's ``init: 1`` with its loop
   ``if iter >= max_init: break`` after the step takes 2 steps, our default. Note that the EMA
   warm-up (``online.ema_decay``) has decay 0 at the first step, so the temporal mean becomes
   the student after one step: in the official code (and here) the init only changes the
   targets of that first step and the temporal mean's batch-norm statistics.
2. *Decaying ensemble*: the ensemble of the other temporal-mean branches is a strong target
   early and fades, so that late students are not pulled towards over-fitted teachers.

Reads what PCL reads plus ``dkel.beta``, ``dkel.decay``, ``dkel.init_steps``, ``dkel.init_lr``,
``run.epochs`` (cos, linear), ``run.batch_size`` and ``run.seed`` (the init batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core.losses import kd_kl
from distill_core.methods import METHODS, step
from distill_core.methods.online import BranchMethod
from distill_core.methods.pcl import peer_mean_term

ENSEMBLE_CUT = 0.01  # exp: w(e) <= 0.01 counts as 0 (loss_wrapper.py)
INIT_WEIGHT_DECAY = 5e-4  # the init's SGD (src/trainer.py), whatever optim.weight_decay is


def ensemble_weight(decay: str, beta: float, epoch: int, epochs: int) -> float:
    """Weight ``w`` of the temporal-mean ensemble term in ``epoch`` (from 0) of ``epochs``."""
    if decay == "exp":
        w = math.exp(-beta * epoch)
        return w if w > ENSEMBLE_CUT else 0.0
    if decay == "cos":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if decay == "linear":
        return 1.0 - epoch / epochs
    raise ValueError(f"dkel.decay={decay!r} is unknown; use exp, cos or linear")


def decoupled_term(
    student: torch.Tensor, mean: torch.Tensor, i: int, tau: float, w: float
) -> torch.Tensor:
    """``w * KL(mean of the other mean_j || student) + (1 - w) * PCL's term``; ``mean`` is ``(m, B, K)``."""
    individual = peer_mean_term(student, mean, i, tau)
    if not w:  # as the official code: the ensemble KL is not computed once its weight is 0
        return individual
    others = torch.cat([mean[:i], mean[i + 1 :]]).mean(0)
    return w * kd_kl(student, others, tau) + (1.0 - w) * individual


def decoupled_init_(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
    weight_decay: float = INIT_WEIGHT_DECAY,
) -> None:
    """One SGD step per batch on the mean of the branch cross-entropies of a ``MultiBranch``, in train mode."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for x, y in batches:
        logits = net(x, ensemble=False)  # the ensemble head takes no step, not even of decay
        step(optimizer, torch.stack([F.cross_entropy(z, y) for z in logits]).mean())
    optimizer.zero_grad(set_to_none=True)  # never trained by gradient again


@METHODS.register("dkel")
class DKEL(BranchMethod):
    """PCL with a temporal mean started by CE steps and a decaying temporal-mean ensemble."""

    def init_mean(self) -> None:
        d = self.cfg.dkel
        lr = d.init_lr if d.init_lr is not None else self.cfg.optim.lr / 100
        decoupled_init_(self.mean, self.init_batches(d.init_steps), lr)

    def ensemble_weight(self, epoch: int) -> float:
        d = self.cfg.dkel
        return ensemble_weight(d.decay, d.beta, epoch, self.cfg.run.epochs)

    def peer_mean_term(
        self, student: torch.Tensor, mean: torch.Tensor, i: int, epoch: int
    ) -> torch.Tensor:
        tau = self.cfg.method.temperature
        return decoupled_term(student, mean, i, tau, self.ensemble_weight(epoch))
