"""DKEL, decoupled knowledge with ensemble learning (Shao et al. 2023; seed 002): PCL + two ideas.

Loss of student peer i in epoch e (counted from 0), all KL terms at temperature tau, scaled by
tau^2, against detached targets:

    L_i = CE(y, s_i) + KL(e_s || s_i) + KL(t_i || s_i) + w(e) * KL(e_t || s_i)

s_i: the peer's logits; e_s: mean of the peers' logits (PCL's peer ensemble); t_i: the logits of
peer i's EMA teacher (the *decoupled knowledge*); e_t: mean of the teachers' logits (the
*teacher ensemble*), weighted by the decaying

    w(e) = exp(-beta * e)                 dkel.decay = exp (the paper's method)
         = 0.5 * (1 + cos(pi * e / E))    dkel.decay = cos       (E = run.epochs)
         = 1 - e / E                      dkel.decay = linear

1. *Decoupled initialisation*: each teacher starts as a copy of its student and then takes
   ``dkel.init_steps`` plain SGD steps of cross-entropy at ``dkel.init_lr`` on training batches
   (paper: one step at lr 0.01), so teacher and student start related but not identical. After
   that the teacher only follows its student by EMA (``dkel.ema_decay``), as in PCL.
2. *Decaying ensemble*: the teacher ensemble is a strong target early and fades out, so that
   late in training the students are not pulled towards over-fitted teachers.

Unlike the public code, distillation is on from the first step (no ramp-up), and nothing here
looks at the test set. The teachers are the evaluated models, as in PCL.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core.data import Batch, Splits, batches
from distill_core.methods import METHODS, step
from distill_core.methods.pcl import PCL
from distill_core.models import speed_up


def ensemble_weight(decay: str, beta: float, epoch: int, epochs: int) -> float:
    """Weight of the teacher-ensemble term in ``epoch`` (from 0) of ``epochs``."""
    if decay == "exp":
        return math.exp(-beta * epoch)
    if decay == "cos":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if decay == "linear":
        return 1.0 - epoch / epochs
    raise ValueError(f"dkel.decay={decay!r} is unknown; use exp, cos or linear")


def decoupled_init_(teacher: nn.Module, draws: Iterable[Batch], lr: float) -> None:
    """One plain SGD step of cross-entropy at ``lr`` per batch of ``draws``."""
    optimizer = torch.optim.SGD(teacher.parameters(), lr=lr)
    for batch in draws:
        step(optimizer, F.cross_entropy(teacher(batch.x), batch.y))
    optimizer.zero_grad(set_to_none=True)  # the teacher is never trained by gradient again


def _endless_batches(data: Splits, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    while True:
        yield from batches(
            data.train_x, data.train_y, batch_size, generator=generator, augment=data.augment
        )


@METHODS.register("dkel")
class DKEL(PCL):
    """PCL with teachers started from their students by CE steps; a decaying teacher ensemble."""

    def make_teachers(self) -> list[nn.Module]:
        # A generator of its own, so that the init is seeded by run.seed yet leaves the
        # trainer's shuffling stream alone; the teachers take successive batches from it.
        d = self.cfg.dkel
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        stream = _endless_batches(self.data, self.cfg.run.batch_size, generator)
        # A copy keeps the memory format but not the compilation (nn.Module drops it on copy).
        teachers = [
            speed_up(copy.deepcopy(student), channels_last=False, compile=self.cfg.run.compile)
            for student in self.nets
        ]
        for teacher in teachers:
            decoupled_init_(teacher, itertools.islice(stream, d.init_steps), d.init_lr)
        return teachers

    def ensemble_weight(self, epoch: int) -> float:
        d = self.cfg.dkel
        return ensemble_weight(d.decay, d.beta, epoch, self.cfg.run.epochs)
