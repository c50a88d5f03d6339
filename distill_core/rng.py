"""The random state a run owns, so that its draws do not depend on what else runs in the process.

Model initialisation, dropout and any other draw from torch's global generators happen inside
``RunRNG.active()``: the run's state is put in place, the draws are made, and the advanced
state is saved back, while ``torch.random.fork_rng`` restores the process's own state on exit.
Two runs advanced in turn in one thread (a study zipping ``fit_epochs`` iterators) thus draw
exactly what each would draw alone. Draws with a ``torch.Generator`` of their own (the batch
order, augmentation) are already independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch


class RunRNG:
    """torch's global random state for one run: CPU, plus the run's CUDA device if it has one."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        with self._forked():
            torch.random.default_generator.manual_seed(seed)
            if self.cuda is not None:
                with torch.cuda.device(self.cuda):
                    torch.cuda.manual_seed(seed)
            self._state = self._read()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block torch's global generators are this run's; they are restored after."""
        with self._forked():
            self._write(self._state)
            try:
                yield
            finally:
                self._state = self._read()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._state = dict(state)

    def _forked(self) -> AbstractContextManager[Any]:
        devices = [] if self.cuda is None else [self.cuda.index or torch.cuda.current_device()]
        return torch.random.fork_rng(devices=devices)

    def _read(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.cuda is not None:
            state["cuda"] = torch.cuda.get_rng_state(self.cuda)
        return state

    def _write(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.cuda is not None:
            torch.cuda.set_rng_state(state["cuda"], self.cuda)
