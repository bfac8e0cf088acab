"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) around any torch optimizer.

SAM minimises ``max_{||e|| <= rho} L(w + e)``. Each update needs two gradients:

1. at ``w``: ``g = grad L(w)``; :meth:`SAM.first_step` moves to the (first-order)
   worst point ``w + e`` with ``e = rho * g / ||g||`` (ASAM, ``adaptive=True``:
   ``e = rho * w**2 * g / ||w * g||``, Kwon et al. 2021);
2. at ``w + e``: :meth:`SAM.second_step` restores ``w`` and lets the base
   optimizer step with the gradient taken at ``w + e``.

Written by hand: no well-kept package on PyPI provides SAM (the reference
implementation, davda54/sam, is a single file that is not published there).

BatchNorm layers would update their running statistics on both forward passes,
the second one at perturbed weights; wrap the second pass in
:func:`disable_running_stats` / :func:`enable_running_stats`::

    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=3e-4, weight_decay=1e-4)
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    disable_running_stats(model)
    loss_fn(model(x), y).backward()
    enable_running_stats(model)
    optimizer.second_step(zero_grad=True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SAM", "disable_running_stats", "enable_running_stats"]


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization wrapping ``base_optimizer_cls``.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or parameter groups, as for any torch optimizer; groups may set
        their own ``rho`` and ``adaptive``.
    base_optimizer_cls : type of torch.optim.Optimizer
        The optimizer that takes the actual step, e.g. ``torch.optim.AdamW``.
    rho : float
        Radius of the weight perturbation (0.05 in the SAM-AST paper).
    adaptive : bool
        Scale the perturbation by ``|w|`` per weight (ASAM).
    **kwargs
        Passed to ``base_optimizer_cls`` (``lr``, ``weight_decay``, ...).

    The base optimizer shares this object's ``param_groups``, so learning-rate
    schedulers work on a SAM instance directly; ``state_dict`` holds the base
    optimizer's state (the perturbation is transient).
    """

    def __init__(
        self,
        params,
        base_optimizer_cls: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **kwargs,
    ):
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer_cls must be a torch.optim.Optimizer subclass, got {base_optimizer_cls!r}")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho >= 0.0:
            raise ValueError(f"rho must be a non-negative number, got {rho!r}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {adaptive!r}")
        super().__init__(params, dict(rho=float(rho), adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _perturbed_gradients(self):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    yield group, param

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        # ||g|| (SAM) or ||w * g|| (ASAM) over every parameter with a gradient
        norms = [
            ((param.abs() if group["adaptive"] else 1.0) * param.grad).norm(p=2)
            for group, param in self._perturbed_gradients()
        ]
        if not norms:
            raise RuntimeError("first_step found no gradients: call backward() on the loss first")
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([norm.to(device) for norm in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move every parameter to ``w + e`` (ascent) using the current gradients."""
        grad_norm = self._grad_norm()
        for group, param in self._perturbed_gradients():
            scale = group["rho"] / (grad_norm.to(param.device) + 1e-12)
            perturbation = (param.square() if group["adaptive"] else 1.0) * param.grad * scale.to(param.dtype)
            self.state[param]["w"] = param.detach().clone()
            param.add_(perturbation)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` and step the base optimizer with the gradients taken at ``w + e``."""
        for group in self.param_groups:
            for param in group["params"]:
                saved = self.state[param].pop("w", None)
                if saved is not None:
                    param.copy_(saved)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """One full SAM update; ``closure`` computes the loss and calls ``backward()`` on it.

        The closure runs twice, at ``w`` and at ``w + e``; gradients are zeroed
        before each run. Returns the loss of the first run (at ``w``).
        """
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure (two forward-backward passes); "
                "or call first_step() and second_step() yourself"
            )
        closure = torch.enable_grad()(closure)
        self.zero_grad()
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def disable_running_stats(model: nn.Module) -> None:
    """Stop every BatchNorm layer of ``model`` from updating its running statistics.

    In training mode the layers still normalise with the batch statistics;
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` stay as they are.
    Undo with :func:`enable_running_stats`.
    """
    _check_module(model)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not hasattr(module, "_sam_tracked_running_stats"):
            module._sam_tracked_running_stats = module.track_running_stats
            module.track_running_stats = False


def enable_running_stats(model: nn.Module) -> None:
    """Restore the BatchNorm behaviour that :func:`disable_running_stats` changed."""
    _check_module(model)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and hasattr(module, "_sam_tracked_running_stats"):
            module.track_running_stats = module._sam_tracked_running_stats
            del module._sam_tracked_running_stats
