"""The update-to-weight ratio ``‖Δw‖/‖w‖`` of each parameter group, measured on sampled steps."""
from __future__ import annotations

from typing import Optional

import torch

from framework.doctor.signals import column
from framework.trainer.steps import total_norm


class UpdateRatios:
    """Per parameter group, the relative size of one optimizer step: ``‖w_{k+1} - w_k‖ / ‖w_k‖``
    (L2 norms over all the group's trainable tensors together), on every ``every_n_steps``-th
    step ``k`` (``k % every_n_steps == 0``).

    The LR doctor (:mod:`framework.doctor`) judges lr0 by the first step's ratio at lr0 (a
    healthy band around 10^-1.85 for SGD, 10^-1.20 for Adam-type optimizers) and draws the
    others; it reads them from ``steps.csv`` (``update_ratio`` for group 0,
    ``update_ratio/<group>`` for the others). A. Karpathy's
    "update:data ratio" (~1e-3 in training, "Building makemore Part 3", 2022) is the same figure.

    Cost: on a sampled step a copy of the weights before the step, then one in-place subtraction
    and two norms after it (about five passes over the weights' memory, on the device, no host
    synchronisation); nothing on the other steps. On the CPU the copy goes into buffers allocated
    at the first sample and kept (memory: one copy of the trainable weights for the whole run): a
    fresh 45 MB copy costs about 6x a copy into kept memory there (page faults: 11.5 ms against
    1.9 ms, resnet18 on 2 cores). On an accelerator each sample clones afresh (its caching
    allocator reuses the blocks; no copy is held between samples).

    Args:
        optimizer: the run's optimizer (its ``param_groups``, in order).
        every_n_steps: (steps) sampling period; 0 = never measured.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every_n_steps: int):
        self.optimizer, self.every = optimizer, int(every_n_steps)
        self._before: Optional[list[list[torch.Tensor]]] = None  # the copies of a sampled step
        self._kept: Optional[list[list[torch.Tensor]]] = None  # the CPU's buffers, kept between samples

    def _groups(self) -> list[list[torch.Tensor]]:
        return [[p.detach() for p in g["params"] if p.requires_grad] for g in self.optimizer.param_groups]

    def before_step(self, k: int) -> None:
        """Copy the weights when step ``k`` is sampled (call before ``optimizer.step()``)."""
        self._before = None
        if self.every > 0 and k % self.every == 0:
            groups = self._groups()
            if any(p.device.type != "cpu" for group in groups for p in group):
                self._before = [[p.clone() for p in group] for group in groups]
                return
            if self._kept is None or _layout(self._kept) != _layout(groups):
                self._kept = [[torch.empty_like(p) for p in group] for group in groups]
            for copies, group in zip(self._kept, groups):
                if group:
                    torch._foreach_copy_(copies, group)
            self._before = self._kept

    def after_step(self) -> Optional[torch.Tensor]:
        """The sampled step's ratios, shape ``(G,)`` on the device (NaN for a group without a
        trainable tensor or with all-zero weights), or None when the step was not sampled."""
        if self._before is None:
            return None
        ratios = []
        device = next((t.device for group in self._before for t in group), torch.device("cpu"))
        for now, before in zip(self._groups(), self._before):
            if not now:
                ratios.append(torch.full((), float("nan"), device=device))
                continue
            weight = total_norm(before)
            torch._foreach_sub_(before, now)  # the copy becomes -delta: no second allocation
            ratios.append(total_norm(before) / torch.where(weight > 0, weight, torch.full_like(weight, float("nan"))))
        self._before = None
        return torch.stack(ratios).float()


def _layout(groups: list[list[torch.Tensor]]) -> list[list[tuple]]:
    """Shape, dtype and device of every tensor, group by group (kept buffers must match them)."""
    return [[(t.shape, t.dtype, t.device) for t in group] for group in groups]


def ratio_columns(group_names: list[str]) -> list[str]:
    """``steps.csv``'s ratio columns: ``update_ratio`` (group 0), ``update_ratio/<group>`` (the
    others), as the ``lr`` columns are named."""
    return [column("update_ratio", i, n) for i, n in enumerate(group_names)]
