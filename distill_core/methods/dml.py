"""Deep mutual learning (Zhang et al. 2018; seed 000): m peers teach each other, no stored teacher.

Loss of peer i of m:

    L_i = CE(y, p_i) + 1/(m-1) * sum_{j != i} KL(p_j^tau || p_i^tau) * tau^2

with the other peers' outputs as fixed (detached) targets. As in the paper's Algorithm 1, the
peers are updated in turn within each step: peer 0 takes its optimizer step, its outputs are
recomputed with the new weights, then peer 1 learns from those fresh outputs, and so on. The
paper uses tau = 1 (``method.temperature: 1.0``); ``method.alpha`` is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_core.config import Config
from distill_core.data import Batch
from distill_core.losses import kd_kl
from distill_core.methods import METHODS, step
from distill_core.methods.online import Peers, forward_keeping_stats
from distill_core.models import MODELS


@METHODS.register("dml")
class DML(Peers):
    """Deep mutual learning: CE plus the mean KL to every other peer, peers updated in turn."""

    has_peers = True

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Like every peer method, and ``method.peer_models`` (if set) names one model per peer."""
        m = cfg.method
        if m.peer_models is not None:
            if len(m.peer_models) != m.peers:
                raise ValueError(
                    f"method.peer_models lists {len(m.peer_models)} models for method.peers={m.peers}; make them agree"
                )
            for name in m.peer_models:
                MODELS.get(name, key="method.peer_models")
            m = m.model_copy(update={"peer_models": None})  # checked here, not refused below
        super().check(cfg.model_copy(update={"method": m}))

    def train_step(
        self, batch: Batch, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> torch.Tensor:
        tau, m = self.cfg.method.temperature, len(self.nets)
        x, y = batch.x, batch.y
        logits = [net(x) for net in self.nets]
        targets = [z.detach() for z in logits]
        losses = []
        for i, (net, optimizer) in enumerate(zip(self.nets, optimizers, strict=True)):
            mimicry = sum(kd_kl(logits[i], targets[j], tau) for j in range(m) if j != i)
            loss = F.cross_entropy(logits[i], y) + mimicry / (m - 1)
            step(optimizer, loss)
            losses.append(loss.detach())
            if i < m - 1:  # the later peers learn from this peer's updated weights
                targets[i] = forward_keeping_stats(net, x)
        return torch.stack(losses).mean()
