"""Peer collaborative learning (Wu & Gong 2021), the baseline of DKEL (seed 002).

m student peers s_i and one temporal-mean (EMA) teacher t_i per peer. Loss of peer i:

    L_i = CE(y, s_i) + KL(e^tau || s_i^tau) * tau^2 + KL(t_i^tau || s_i^tau) * tau^2

where e = mean of the peers' logits (the peer ensemble) and t_i the logits of peer i's teacher,
both detached. The peers' losses are independent, so one backward over their sum updates all.
After every step each teacher follows its peer: t_i = d * t_i + (1 - d) * s_i with
d = ``dkel.ema_decay`` (parameters only). The teachers are the models evaluated (``peer0``...),
as in the paper.

Choices where the paper is silent or our peers differ from its multi-branch network:
- peers are independent networks (no shared trunk), and the ensemble is the plain mean of logits
  (PCL learns a fused ensemble head; a mean needs no extra parameters or CE term);
- each teacher starts from its own random initialisation (the setting DKEL's decoupled
  initialisation replaces);
- batch-norm statistics are not averaged: the teachers produce their targets in train mode, so
  their running statistics follow their own weights, as in Mean Teacher.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_core.config import Config
from distill_core.data import Batch, Splits
from distill_core.losses import kd_kl
from distill_core.methods import METHODS
from distill_core.methods.online import Peers, ema_


@METHODS.register("pcl")
class PCL(Peers):
    """Peer collaborative learning: CE + peer-ensemble KL + KL to each peer's EMA teacher."""

    def __init__(
        self, cfg: Config, data: Splits, device: torch.device, teacher: nn.Module | None
    ) -> None:
        super().__init__(cfg, data, device, teacher)
        self.teachers = [t.requires_grad_(False) for t in self.make_teachers()]
        self._teacher_params = [p for t in self.teachers for p in t.parameters()]
        self._student_params = [p for s in self.nets for p in s.parameters()]

    def make_teachers(self) -> list[nn.Module]:
        """One EMA teacher per peer, randomly initialised like any new network."""
        return [self.build(self.cfg.model.name) for _ in self.nets]

    def ensemble_weight(self, epoch: int) -> float:
        """Weight of the teacher-ensemble term in ``epoch``; PCL has none."""
        return 0.0

    def train_step(
        self, batch: Batch, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> torch.Tensor:
        tau = self.cfg.method.temperature
        x, y = batch.x, batch.y
        logits = [net(x) for net in self.nets]
        with torch.no_grad():
            teacher_logits = [t(x) for t in self.teachers]
        peer_ensemble = torch.stack(logits).mean(0).detach()
        w = self.ensemble_weight(epoch)
        teacher_ensemble = torch.stack(teacher_logits).mean(0)
        losses = []
        for s, t in zip(logits, teacher_logits, strict=True):
            loss = F.cross_entropy(s, y) + kd_kl(s, peer_ensemble, tau) + kd_kl(s, t, tau)
            if w:
                loss = loss + w * kd_kl(s, teacher_ensemble, tau)
            losses.append(loss)
        total = torch.stack(losses)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        for optimizer in optimizers:
            optimizer.step()
        ema_(self._teacher_params, self._student_params, self.cfg.dkel.ema_decay)
        return total.detach().mean()

    def eval_models(self) -> dict[str, nn.Module]:
        return {f"peer{i}": t for i, t in enumerate(self.teachers)}

    def train(self) -> None:
        super().train()
        for t in self.teachers:
            t.train()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"teachers": [t.state_dict() for t in self.teachers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for t, s in zip(self.teachers, state["teachers"], strict=True):
            t.load_state_dict(s)
