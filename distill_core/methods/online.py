"""Shared parts of the online methods: DML's peers, and PCL/DKEL's multi-branch training.

PCL and DKEL (seed 002) train ONE multi-branch network (``distill_core.branches``) and keep a
temporal-mean copy of it. Both follow the official DKEL code
(shaoeric/Decoupled-Knowledge-with-Ensemble-Learning-for-Online-Distillation); what they share
lives in ``BranchMethod``:

- Inputs (``src/datasets/cifar.py``): with augmentation every branch sees its own random crop +
  flip of the image, drawn from a generator owned by the method (seeded from ``run.seed``, saved
  in the state); without, all branches see the batch and the trunk runs once.
- Loss (``src/losses/loss_wrapper.py``), all KL at temperature tau scaled by tau^2, targets
  detached::

      L = CE(ens, y) + sum_i [CE(s_i, y) + r(e) * KL(ens || s_i) + r(e) * PM_i]

  ``ens`` is the ensemble head, ``s_i`` branch i, ``r(e)`` the ramp-up (``rampup_weight``),
  ``PM_i`` the method's term on the temporal-mean outputs (``BranchMethod.peer_mean_term``).
- Temporal mean (``main.py``: ``deepcopy(model)``; ``src/utils/ema.py``): a copy of the whole
  network, run in train mode on the same views, updated after every optimizer step by
  ``ema_decay(step, dkel.ema_decay)``. Parameters only: its batch-norm statistics come from its
  own forwards. Its branches are the evaluated models (``peer0`` ...); the trainer picks the best
  on validation (the official code picks on the test set).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from distill_core.branches import MultiBranch, build_branches, check_split
from distill_core.config import Config
from distill_core.data import CROP_PAD, Batch, Splits, crop_flip, crop_flip_draws
from distill_core.errors import ConfigError
from distill_core.losses import kd_kl
from distill_core.methods import Method, step
from distill_core.models import speed_up

#: Final weight of the distillation terms: ``compute_rampup_weight(epoch, lambd=0.1)`` in
#: ``src/losses/loss_wrapper.py``; its loss weights ``[1.0, 1.0, 1.0]`` in the config are unused.
RAMPUP_FINAL = 0.1
_AUGMENT_STREAM = 2  # spawn key of the method's generator (the trainer's is seeded by run.seed)


class Peers(Method):
    """Base of DML: ``method.peers`` independent students trained together, no stored teacher."""

    has_peers = True

    def architectures(self) -> list[str]:
        return self.cfg.method.peer_models or [self.cfg.model.name] * self.cfg.method.peers

    def eval_models(self) -> dict[str, nn.Module]:
        return {f"peer{i}": net for i, net in enumerate(self.nets)}


@torch.no_grad()
def ema_(targets: list[torch.Tensor], sources: list[torch.Tensor], decay: float) -> None:
    """In place, fused over all tensors: ``t = decay * t + (1 - decay) * s``."""
    torch._foreach_lerp_(targets, sources, 1.0 - decay)


def ema_decay(step: int, decay: float) -> float:
    """Mean-teacher warm-up: ``min(1 - 1/(step + 1), decay)``, ``step`` counting updates from 0.

    As ``src/utils/ema.py`` of the official DKEL code. The first update (step 0) has decay 0: it
    sets the temporal mean to the student, so its starting weights only shape the targets of
    the very first step.
    """
    return min(1.0 - 1.0 / (step + 1), decay)


def rampup_weight(kind: str, epoch: int, rampup_epochs: int) -> float:
    """Weight ``r(e)`` of the distillation terms in ``epoch`` (counted from 0).

    - ``intended``: the mean-teacher sigmoid ramp ``0.1 * exp(-5 * (1 - e/R)^2)`` for
      ``e < R = rampup_epochs``, then 0.1: what the official code meant.
    - ``code``: the official ``compute_rampup_weight(epoch, lambd=0.1, alpha=R)``, which divides
      by ``lambd`` instead of ``alpha``: 6.7e-4 at epoch 0, about 0 (< 1e-170) up to epoch R,
      0.1 after it. Distillation is thus off for the first 80 of its 300 epochs.
    - ``none``: 0.1 from the first epoch.
    """
    if kind == "none" or (kind == "intended" and epoch >= rampup_epochs):
        return RAMPUP_FINAL
    if kind == "intended":
        return RAMPUP_FINAL * math.exp(-5.0 * (1.0 - epoch / rampup_epochs) ** 2)
    if kind == "code":
        if epoch > rampup_epochs:
            return RAMPUP_FINAL
        return RAMPUP_FINAL * math.exp(-5.0 * (1.0 - epoch / RAMPUP_FINAL) ** 2)
    raise ValueError(f"dkel.rampup={kind!r} is unknown; use intended, code or none")


def method_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded from ``run.seed``, yet a different stream from the trainer's."""
    state = np.random.SeedSequence(seed, spawn_key=(_AUGMENT_STREAM,)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class BranchMethod(Method):
    """PCL and DKEL: one multi-branch student (``nets[0]``) and its temporal mean (``mean``).

    Subclasses define ``peer_mean_term`` and may override ``init_mean``.
    """

    has_peers = True

    def __init__(
        self, cfg: Config, data: Splits, device: torch.device, teacher: nn.Module | None
    ) -> None:
        self.check(cfg)
        super().__init__(cfg, data, device, teacher)
        self.generator = method_generator(cfg.run.seed)
        # The epoch's crop/flip draws, (m, 3, N) on the device, and the generator state they
        # were drawn from (so that a resumed run can draw them again).
        self._draws: torch.Tensor | None = None
        self._draws_epoch = -1
        self._draws_from: torch.Tensor | None = None
        # A copy keeps the memory format but not the compilation (nn.Module drops it on copy).
        student = self.nets[0]
        self.mean: MultiBranch = copy.deepcopy(student)
        speed_up(self.mean, channels_last=False, compile=cfg.run.compile)
        self.init_mean()
        self.mean.requires_grad_(False)
        self._mean_params = list(self.mean.parameters())
        self._student_params = list(student.parameters())
        self.ema_step = 0  # optimizer steps taken, for the EMA warm-up

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Raise ``ConfigError`` for a model without a trunk/branch cut, or a student initialisation."""
        super().check(cfg)
        check_split(cfg.model.name, cfg.method.name)
        if cfg.init.interp_lambda is not None:
            raise ConfigError(
                f"init.interp_lambda initialises a single student, not {cfg.method.name}'s "
                "multi-branch network; remove init.interp_lambda"
            )

    def build(self, name: str) -> nn.Module:
        d, run = self.data, self.cfg.run
        net = build_branches(
            name,
            d.in_channels,
            d.num_classes,
            d.image_size,
            branches=self.cfg.method.peers,
            method=self.cfg.method.name,
        ).to(self.device)
        return speed_up(net, channels_last=run.channels_last, compile=run.compile)

    def init_mean(self) -> None:
        """Start the temporal mean from the student's weights (it is a copy already)."""

    def peer_mean_term(
        self, student: torch.Tensor, mean: torch.Tensor, i: int, epoch: int
    ) -> torch.Tensor:
        """``PM_i``: branch ``i``'s logits against the temporal-mean branch logits ``(m, B, K)``."""
        raise NotImplementedError

    # --- inputs --------------------------------------------------------------------------

    def views(self, batch: Batch, epoch: int) -> torch.Tensor:
        """``(m, B, C, H, W)``, one augmented view per branch; or the batch itself without augmentation."""
        if not self.data.augment:
            return batch.x
        if epoch != self._draws_epoch:
            self._draw(epoch)
        assert self._draws is not None
        raw = self.data.train_x[batch.index]
        return torch.stack([crop_flip(raw, d[:, batch.index], pad=CROP_PAD) for d in self._draws])

    def _draw(self, epoch: int) -> None:
        """The crops and flips of every branch for every training image in ``epoch``, sent to the device once."""
        self._draws_from = self.generator.get_state()
        n = len(self.data.train_y)
        draws = [crop_flip_draws(n, pad=CROP_PAD, generator=self.generator) for _ in self.branches]
        self._draws = torch.stack(draws).to(self.device)
        self._draws_epoch = epoch

    def init_batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` shuffled training batches (as views, like ``views``) from the method's generator."""
        d, size = self.data, self.cfg.run.batch_size
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        while len(out) < steps:
            order = torch.randperm(len(d.train_y), generator=self.generator).to(self.device)
            for start in range(0, len(order), size):
                if len(out) == steps:
                    break
                idx = order[start : start + size]
                x = d.train_x[idx]
                if d.augment:
                    draws = [
                        crop_flip_draws(len(idx), pad=CROP_PAD, generator=self.generator)
                        for _ in self.branches
                    ]
                    x = torch.stack(
                        [crop_flip(x, dr.to(self.device), pad=CROP_PAD) for dr in draws]
                    )
                out.append((x, d.train_y[idx]))
        return out

    @property
    def branches(self) -> range:
        return range(self.cfg.method.peers)

    # --- training ------------------------------------------------------------------------

    def train_step(
        self, batch: Batch, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> torch.Tensor:
        tau, y = self.cfg.method.temperature, batch.y
        x = self.views(batch, epoch)
        out = self.nets[0](x)
        with torch.no_grad():
            mean = self.mean(x, ensemble=False)
        logits, ensemble = out[:-1], out[-1]
        target = ensemble.detach()
        r = rampup_weight(self.cfg.dkel.rampup, epoch, self.cfg.dkel.rampup_epochs)
        loss = F.cross_entropy(ensemble, y)
        for i in self.branches:
            s = logits[i]
            distill = kd_kl(s, target, tau) + self.peer_mean_term(s, mean, i, epoch)
            loss = loss + F.cross_entropy(s, y) + r * distill
        step(optimizers[0], loss)
        ema_(
            self._mean_params,
            self._student_params,
            ema_decay(self.ema_step, self.cfg.dkel.ema_decay),
        )
        self.ema_step += 1
        return loss.detach()

    def eval_models(self) -> dict[str, nn.Module]:
        return {f"peer{i}": self.mean.branch(i) for i in self.branches}

    def train(self) -> None:
        super().train()
        self.mean.train()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "mean": self.mean.state_dict(),
            "ema_step": self.ema_step,
            # before the current epoch's draws, if any
            "generator": self.generator.get_state()
            if self._draws_from is None
            else self._draws_from,
            "draws_epoch": self._draws_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mean.load_state_dict(state["mean"])
        self.ema_step = state["ema_step"]
        # Back to the state before the current epoch's draws, and draw them again.
        self.generator.set_state(state["generator"])
        self._draws, self._draws_epoch, self._draws_from = None, -1, None
        if state["draws_epoch"] >= 0:
            self._draw(state["draws_epoch"])


@torch.no_grad()
def forward_keeping_stats(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` in its current mode, without touching its buffers (batch-norm running statistics).

    DML recomputes a peer's outputs after its update; a plain second forward in train mode would
    count the batch twice in the running statistics. Cloned buffers absorb that update instead.
    """
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    return functional_call(net, buffers, (x,), strict=False)
