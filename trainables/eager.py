"""torch's optimisers, eager, without importing ``torch._dynamo``.

A ``torch.optim`` optimiser imports ``torch._dynamo`` (torch's compiler front end: 1.3-1.7 s of CPU in
each process here, nearly as much as ``import torch`` itself) when it is built, zeroes its gradients,
steps or saves its state, only to keep the compiler out of those methods or to mark graph breaks
for it. Until something imports the compiler nothing can be compiling, and then those guards do
nothing: ``defer_dynamo`` lets the four guarded methods run plain until then (and torch's own way
after), and ``eager_step`` steps under ``no_grad`` as torch's wrapper does, its hooks and profiler
label kept. The updates are the same to the bit (``tests/test_loop.py``); a Ray worker reaches its
first result that much sooner. The loop compiles a model's forward pass at most, never a step.
"""
from __future__ import annotations

import inspect
import sys
import types
from typing import Any, Callable

import torch

_GUARDED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def compiler_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def defer_dynamo() -> None:
    """Make ``torch.optim.Optimizer``'s dynamo-disabled methods import the compiler only once it is loaded."""
    for name in _GUARDED:
        guarded = getattr(torch.optim.Optimizer, name)
        fn = getattr(guarded, "__wrapped__", None)  # torch._disable_dynamo caches its disabled fn on it
        if fn is not None and "__dynamo_disable" not in vars(fn) and not compiler_loaded():
            setattr(fn, "__dynamo_disable", _until_compiler(guarded, fn))


def _until_compiler(guarded: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if compiler_loaded():  # from now on, torch's own guard
            vars(fn).pop("__dynamo_disable", None)
            return guarded(*args, **kwargs)
        return fn(*args, **kwargs)
    return call


def eager_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer.step()`` without the compiler's graph breaks (``differentiable`` optimisers keep torch's)."""
    if optimizer.defaults.get("differentiable"):
        return optimizer
    update = inspect.unwrap(type(optimizer).step)  # under torch's hooks wrapper and its grad-mode one
    step = torch.optim.Optimizer.profile_hook_step(torch.no_grad()(update))
    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
    return optimizer
