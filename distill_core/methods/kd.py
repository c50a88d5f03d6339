"""Offline KD (Hinton; seeds 000/001), ESKD (seed 003: stop KD early), and TAKD's student stage.

Loss: ``sum_k w_k * term_k`` with ``w = {ce: 1 - alpha, kl|mse: alpha}`` (``losses.loss_weights``).
TAKD differs only in where its teacher comes from (the teacher assistant, see ``teachers``).
"""

from __future__ import annotations

import torch

from distill_core.losses import loss_weights, weighted_loss
from distill_core.methods import METHODS, Method, step


@METHODS.register("kd")
class KD(Method):
    """Offline KD from a stored teacher: (1 - alpha) * CE + alpha * KL(p_t^tau || p_s^tau) * tau^2.

    ``method.loss: mse`` replaces the KL term by the MSE between logits (seed 001).
    """

    needs_teacher = True

    def kd_weights(self, epoch: int) -> dict[str, float]:
        """The loss-term weights in ``epoch`` (counted from 0)."""
        return loss_weights(self.cfg.method)

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> float:
        assert self.teacher is not None
        weights = self.kd_weights(epoch)
        teacher_logits = None
        if any(w for name, w in weights.items() if name != "ce"):  # ESKD after its stop: no teacher
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        logits = self.nets[0](x)
        loss = weighted_loss(weights, logits, y, teacher_logits, self.cfg.method.temperature)
        step(optimizers[0], loss)
        return loss.item()


@METHODS.register("eskd")
class ESKD(KD):
    """KD until ``method.kd_stop_epoch`` epochs are done, cross-entropy alone afterwards."""

    def kd_weights(self, epoch: int) -> dict[str, float]:
        stop = self.cfg.method.kd_stop_epoch
        if stop is not None and epoch >= stop:
            return {"ce": 1.0}
        return super().kd_weights(epoch)


@METHODS.register("takd")
class TAKD(KD):
    """KD from a teacher assistant (method.ta_model) that was itself distilled from the teacher."""
