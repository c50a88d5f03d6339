"""Offline KD (Hinton; seeds 000/001), ESKD (seed 003: stop KD early), and TAKD's student stage.

Loss: ``sum_k w_k * term_k`` with ``w = {ce: 1 - alpha, kl|mse: alpha}`` (``losses.loss_weights``).
TAKD differs only in where its teacher comes from (the teacher assistant, see ``teachers``).

The teacher runs in eval mode. Without augmentation its logits on the training split are the same
every epoch: they are computed once and looked up by the batch's indices (``teacher_logits``);
with augmentation the teacher runs on every batch (in inference mode; in bfloat16 with
``run.teacher_amp``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from distill_core.config import Config
from distill_core.data import Batch, Splits
from distill_core.losses import loss_weights, weighted_loss
from distill_core.methods import METHODS, Method, step
from distill_core.models import MODELS
from distill_core.teacher_logits import train_logits


@METHODS.register("kd")
class KD(Method):
    """Offline KD from a stored teacher: (1 - alpha) * CE + alpha * KL(p_t^tau || p_s^tau) * tau^2.

    ``method.loss: mse`` replaces the KL term by the MSE between logits (seed 001).
    """

    needs_teacher = True
    teacher_stages = ("teacher",)

    def __init__(
        self, cfg: Config, data: Splits, device: torch.device, teacher: nn.Module | None
    ) -> None:
        super().__init__(cfg, data, device, teacher)
        assert teacher is not None
        teacher.eval()  # cached and per-batch logits alike come from the eval-mode teacher
        self._train_logits: torch.Tensor | None = None  # computed at the first KD step

    def kd_weights(self, epoch: int) -> dict[str, float]:
        """The loss-term weights in ``epoch`` (counted from 0)."""
        return loss_weights(self.cfg.method)

    def uses_logit_cache(self) -> bool:
        """Whether the teacher's training-split logits are computed once (no augmentation)."""
        return not self.data.augment

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        """The teacher's logits on ``batch``: looked up in the cache, or computed on the batch."""
        if self.uses_logit_cache():
            if self._train_logits is None:
                self._train_logits = train_logits(self.cfg, self.teacher, self.data)
            return self._train_logits[batch.index]
        bf16 = self.cfg.run.teacher_amp
        with torch.inference_mode(), torch.autocast(batch.x.device.type, torch.bfloat16, bf16):
            logits = self.teacher(batch.x)
        # a float32 tensor outside inference mode: the mse term saves its target for backward
        return logits.to(torch.float32, copy=True)

    def train_step(
        self, batch: Batch, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> torch.Tensor:
        weights = self.kd_weights(epoch)
        teacher_logits = None
        if any(w for name, w in weights.items() if name != "ce"):  # ESKD after its stop: no teacher
            teacher_logits = self.teacher_logits(batch)
        logits = self.nets[0](batch.x)
        loss = weighted_loss(weights, logits, batch.y, teacher_logits, self.cfg.method.temperature)
        step(optimizers[0], loss)
        return loss.detach()


@METHODS.register("eskd")
class ESKD(KD):
    """KD until ``method.kd_stop_epoch`` epochs are done, cross-entropy alone afterwards."""

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if cfg.method.kd_stop_epoch is None:
            raise ValueError(
                "method eskd needs method.kd_stop_epoch; set it to the epoch after which KD stops"
            )

    def kd_weights(self, epoch: int) -> dict[str, float]:
        stop = self.cfg.method.kd_stop_epoch
        if stop is not None and epoch >= stop:
            return {"ce": 1.0}
        return super().kd_weights(epoch)


@METHODS.register("takd")
class TAKD(KD):
    """KD from a teacher assistant (method.ta_model) that was itself distilled from the teacher."""

    teacher_stages = ("teacher", "assistant")

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if cfg.method.ta_model is None:
            raise ValueError(
                "method takd needs a teacher assistant; set method.ta_model (e.g. resnet20)"
            )
        MODELS.get(cfg.method.ta_model, key="method.ta_model")
