"""Keeping torch's compiler out of stage processes that never compile.

``torch._dynamo`` takes 3 to 4 s to import on a 2-core CPU (``python -X importtime``), as
long as a tiny stage's whole work, and most stages import it without ever compiling:

- torchvision imports it at start-up, for one name (``torchvision.ops.roi_align`` reads
  ``torch._dynamo.utils.is_compile_supported``, which it calls only inside ``roi_align``);
- every step of AdamW, SGD and the other torch optimizers imports it to mark graph breaks
  (torch's ``_use_grad_for_differentiable``), which do nothing outside a compiled graph;
- the optimizer methods wrapped in ``torch._disable_dynamo`` (``add_param_group``,
  ``zero_grad``, ``state_dict``, ...) import it on their first call, to mark themselves
  untraceable;
- ``torch.use_deterministic_algorithms`` imports the compiler's configuration to set its
  flag too (:func:`transferlab.runtime.configure_runtime` sets the kernel flag alone when
  nothing compiles).

:func:`without_compiler` takes each of these away for the process, and each is recognised by
its code, so a torch or torchvision whose internals differ is left as it is: slower, never
wrong. tests/test_runtime.py checks that a probe fit and a fine-tuning step import no
compiler and compute exactly what they compute with it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.optim
from torch.optim.optimizer import _use_grad_for_differentiable


def without_compiler() -> None:
    """For a process that will not call ``torch.compile`` (or ``torch.export``): import
    torchvision without the compiler, step optimizers without graph breaks, and mark the
    optimizers' untraceable methods as already marked."""
    if "torch._dynamo" in sys.modules:
        return  # already paid for
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
    _optimizers_without_compiler()


def _lazy_is_compile_supported(device_type: Any) -> Any:
    """torchvision's one use of the compiler's utilities, imported when first called."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def _compiler_utils_stand_in() -> types.ModuleType:
    """What torchvision sees as ``torch._dynamo.utils`` while it is imported: the one
    function it takes, deferred; any other name imports the real module (a torchvision that
    wants more from it gets it, and pays the import as before)."""
    stand_in = types.ModuleType("torch._dynamo.utils")
    stand_in.is_compile_supported = _lazy_is_compile_supported  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # the import system asking for __path__ and the like
            raise AttributeError(name)
        if sys.modules.get("torch._dynamo.utils") is stand_in:
            del sys.modules["torch._dynamo.utils"]
        import torch._dynamo.utils as real

        return getattr(real, name)

    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    return stand_in


def _disable_when_compiling(
    fn: Callable[..., Any] | None = None, recursive: bool = True, *, reason: str | None = None
) -> Any:
    """``torch.compiler.disable`` as torchvision's import uses it (on ``tv_tensors.wrap``):
    outside a compiled graph a disabled function is the function itself, so the compiler is
    imported only if one is ever traced through it."""
    if fn is None:
        return functools.partial(_disable_when_compiling, recursive=recursive, reason=reason)
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            from torch._dynamo import disable

            disabled.append(disable(fn, recursive, reason=reason))
        return disabled[0](*args, **kwargs)

    return call


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Finds torchvision's modules as the path finder does, with a loader that runs each one
    under the two stand-ins and puts the real ones back after (the outermost, when one
    imports another). Only torchvision's modules, while they are imported, see them; once
    the real compiler is loaded, they are imported as they are."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] != "torchvision" or "torch._dynamo" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _StandInLoader(spec.loader)
        return spec


class _StandInLoader(importlib.abc.Loader):
    active = False  # the stand-ins are in place: a torchvision module is being imported

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if _StandInLoader.active or "torch._dynamo" in sys.modules:
            # imported by another torchvision module (the outermost one put the stand-ins in
            # place and takes them away), or the compiler is loaded anyway
            return self.loader.exec_module(module)
        stand_in, disable = _compiler_utils_stand_in(), torch.compiler.disable
        sys.modules["torch._dynamo.utils"] = stand_in
        torch.compiler.disable = _disable_when_compiling
        _StandInLoader.active = True
        try:
            self.loader.exec_module(module)
        finally:
            _StandInLoader.active = False
            torch.compiler.disable = disable
            if sys.modules.get("torch._dynamo.utils") is stand_in:
                del sys.modules["torch._dynamo.utils"]

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: the real loader's
        return getattr(self.loader, name)


def _optimizers_without_compiler() -> None:
    """Each torch optimizer's ``step`` without its graph breaks; each method wrapped in
    ``torch._disable_dynamo`` handed its own function as the marked one (the cache its
    first call would fill, by importing the compiler). Only what is recognised by its code
    object is changed: torch's wrappers of this version."""
    disabled = torch._disable_dynamo(without_compiler).__code__
    graph_breaks = _use_grad_for_differentiable(without_compiler).__code__
    for optimizer in {
        o for o in _optim_members() if isinstance(o, type) and issubclass(o, torch.optim.Optimizer)
    }:
        step = vars(optimizer).get("step")
        if step is not None and getattr(step, "__code__", None) is graph_breaks:
            optimizer.step = _step_without_graph_breaks(step)  # type: ignore[method-assign]
    for member in {id(m): m for m in _optim_members() if getattr(m, "__code__", None) is disabled}.values():
        original = member.__wrapped__
        if getattr(original, "__dynamo_disable", None) is None:
            setattr(original, "__dynamo_disable", original)


def _optim_members() -> list[Any]:
    """What torch.optim's modules define (classes and functions) and each class's own
    attributes (its methods)."""
    out: list[Any] = []
    for module in [m for name, m in sys.modules.items() if name.startswith("torch.optim") and m]:
        for owner in list(vars(module).values()):
            out.append(owner)
            if isinstance(owner, type):
                out.extend(vars(owner).values())
    return out


def _step_without_graph_breaks(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """torch's step wrapper as it runs outside a compiled graph: grad mode set to the
    optimizer's ``differentiable`` for the step and restored after, without the two
    ``torch._dynamo.graph_break()`` calls (no-ops there, but importing the compiler). Under
    a compiler after all, torch's own wrapper runs."""
    step = wrapper.__wrapped__  # type: ignore[attr-defined]

    @functools.wraps(step)
    def _step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return wrapper(self, *args, **kwargs)
        before = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(before)

    return _step
