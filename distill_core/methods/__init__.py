"""Training methods by name (``method.name``). Each is one small module with one ``Method`` subclass.

A method owns its trainable networks (``nets``, one optimizer each), does one training step
(forward, loss, backward, optimizer step) and names the models to evaluate. The trainer does the rest.
A step returns its loss as a detached tensor, not a float: reading the value would wait for the
device on every batch, so the trainer reads the epoch's mean once.

A method also declares what it needs (``needs_teacher``, ``has_peers``, ``teacher_stages``) and
checks its own config keys (``check``); the config, the teacher store and the trainer ask the
class, never compare method names. A method module registers its class when imported;
``distill_core/__init__.py`` imports the built-in ones (this package imports none of them, so
that they can import it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from distill_core.config import Config
from distill_core.data import Batch, Splits
from distill_core.models import (
    MODELS,
    build_model,
    freeze_all_but_head,
    load_pretrained,
    pretrained_file,
    speed_up,
    train_mode,
)
from distill_core.registry import Registry


class Method:
    """A single student trained on cross-entropy alone (scratch; the base class of every method)."""

    #: Whether the method distils from a stored network (``teacher`` is given to it).
    needs_teacher: ClassVar[bool] = False
    #: Whether it trains ``method.peers`` networks together (online distillation).
    has_peers: ClassVar[bool] = False
    #: The teacher-store entries it needs, in training order; the last is the one it distils from.
    teacher_stages: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Raise ``ValueError`` (what is wrong and the fix) when ``cfg`` lacks what the method needs.

        Subclasses that read more keys extend it.
        """
        m = cfg.method
        if cls.has_peers and m.peers < 2:
            raise ValueError(f"method {m.name} needs at least 2 peers; set method.peers >= 2")
        if m.peer_models is not None:
            raise ValueError(
                "method.peer_models is only used by dml; remove it or set method.name=dml"
            )

    def __init__(
        self, cfg: Config, data: Splits, device: torch.device, teacher: nn.Module | None
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.teacher = teacher
        self.notes: list[str] = []  # what building the networks has to say (the trainer logs it)
        self.nets: list[nn.Module] = [self.build(name) for name in self.architectures()]

    def architectures(self) -> list[str]:
        """One architecture per trainable network (peer methods return one per peer)."""
        return [self.cfg.model.name]

    def build(self, name: str) -> nn.Module:
        """A fresh network of a registered architecture for this data set, on the device.

        A network of the student architecture (``model.name``) starts from ``model.pretrained``
        and has all but its head frozen with ``model.freeze``.
        """
        d, run, m = self.data, self.cfg.run, self.cfg.model
        net = build_model(name, d.in_channels, d.num_classes, d.image_size)
        if name == m.name and m.pretrained is not None:
            path = pretrained_file(name, m.pretrained, "model.pretrained")
            self.notes += load_pretrained(net, path)
        if name == m.name and m.freeze:
            freeze_all_but_head(net, MODELS.get(name).head(net))
        return speed_up(net.to(self.device), channels_last=run.channels_last, compile=run.compile)

    def train_step(
        self, batch: Batch, epoch: int, optimizers: list[torch.optim.Optimizer]
    ) -> torch.Tensor:
        """One optimisation step on a batch; returns the detached loss. ``epoch`` counts from 0."""
        loss = nn.functional.cross_entropy(self.nets[0](batch.x), batch.y)
        step(optimizers[0], loss)
        return loss.detach()

    def eval_models(self) -> dict[str, nn.Module]:
        """Models to evaluate: ``{"": student}``, or ``{"peer0": ..., "peer1": ...}``."""
        return {"": self.nets[0]}

    def train(self) -> None:
        for net in self.nets:
            train_mode(net)

    def state_dict(self) -> dict[str, Any]:
        return {"nets": [net.state_dict() for net in self.nets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for net, s in zip(self.nets, state["nets"], strict=True):
            net.load_state_dict(s)


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """zero_grad, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


METHODS: Registry[type[Method]] = Registry("method", "method.name")
METHODS.register("scratch")(Method)
