"""A timm+peft model traced into a torch-only one: ``TracedModel``.

The model is traced with ``torch.fx`` into plain Python code over torch operations; the
result holds that code and the model's own modules and parameters, in the same tree under
the same names, with every module that is not a ``torch.nn`` building block replaced by a
plain container. The forward depends on the mode (``FusedLoraLinear`` folds the adapters
into the weight in evaluation without gradients), so it is traced once per (train/eval,
gradients on/off) combination and the matching code runs. Control flow on a traced value
(e.g. timm's position-embedding resampling, taken only for another image size) follows
the example input and leaves a run-time guard in the code, so an input unlike the traced
one fails loudly instead of computing something else.

A traced model also carries what ``fedvit.tensors`` answers for its build (LoRA or not,
the exchanged tensors' names, the input statistics), recorded from timm's and peft's
helpers when it was traced: loading and using it needs torch alone. The cache of traced
models on disk is ``fedvit.traced``'s.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import operator
from typing import Any

import torch
from torch import nn

from fedvit.tensors import exchanged_state, input_stats, is_lora

MODES = {(True, True): "train", (True, False): "train-no-grad",
         (False, True): "eval-grad", (False, False): "eval"}
_GLOBAL_MODULES = ("builtins", "math", "operator", "torch")  # what traced code may call


class TracedModel(nn.Module):
    """A model traced from its timm+peft build: the same module tree (containers in place
    of non-``torch.nn`` modules), the same parameters under the same names, and a forward
    that runs the traced code of the current mode.

    Args:
        tree: the module tree (its parameters and buffers are adopted, not copied).
        sources: traced Python source by mode (``MODES``' values), each defining
            ``forward(self, x)``.
        lora: whether the build was a LoRA model (``fedvit.tensors.is_lora``).
        stats: the build's input (mean, std) (``fedvit.tensors.input_stats``).
        exchanged: the build's exchanged tensors' names, in order
            (``fedvit.tensors.exchanged_state``).
    """

    def __init__(self, tree: nn.Module, sources: dict[str, str], lora: bool,
                 stats: tuple[tuple, tuple], exchanged: list[str]) -> None:
        super().__init__()
        _adopt(self, tree)
        self.fedvit_lora = lora
        self.fedvit_input_stats = (tuple(stats[0]), tuple(stats[1]))
        self.fedvit_exchanged = tuple(exchanged)
        self._sources = dict(sources)
        self._compile_sources()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The build's forward, in the current mode.

        Args:
            x: ``(B, 3, S, S)`` float32 normalised images, ``S`` the traced image size.

        Returns:
            ``(B, num_classes)`` logits.

        Raises:
            AssertionError: an input unlike the traced one (a traced guard).
        """
        return self._forwards[MODES[(self.training, torch.is_grad_enabled())]](self, x)

    def to_artefact(self) -> dict[str, Any]:
        """What a file needs to hold to rebuild this model with ``from_artefact``.

        Returns:
            ``{"tree": plain module tree, "sources": {mode: source}, "lora": bool,
            "stats": (mean, std), "exchanged": [names]}``: torch.nn modules, tensors and
            Python values only (``torch.load(..., weights_only=True)`` reads it back).
        """
        return {"tree": _container(self), "sources": dict(self._sources),
                "lora": self.fedvit_lora, "stats": self.fedvit_input_stats,
                "exchanged": list(self.fedvit_exchanged)}

    @classmethod
    def from_artefact(cls, saved: dict[str, Any]) -> TracedModel:
        """The model ``to_artefact`` described.

        Args:
            saved: what ``to_artefact`` returned (as read back).

        Returns:
            The traced model.

        Raises:
            KeyError: an entry is missing.
        """
        return cls(saved["tree"], saved["sources"], saved["lora"], saved["stats"],
                   saved["exchanged"])

    def _compile_sources(self) -> None:
        compiled: dict[str, Any] = {}
        self._forwards = {mode: compiled.setdefault(src, _compile(src))
                          for mode, src in self._sources.items()}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_forwards", None)  # functions: recompiled from the sources
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._compile_sources()


# ------------------------------------------------------------------------- tracing


def trace(model: nn.Module, img_size: int) -> TracedModel:
    """``model`` traced in every mode.

    Args:
        model: a build of ``fedvit.model.build_model`` (consumed: its parameters move
            into the result).
        img_size: the input size, pixels (an example ``(2, 3, img_size, img_size)``
            input decides the branches on traced values).

    Returns:
        The traced model (the mode ``model`` was in).

    Raises:
        ValueError: the traced code calls something outside torch and Python built-ins.
        torch.fx.proxy.TraceError: the model cannot be traced.
    """
    lora = is_lora(model)
    stats = input_stats(model)
    exchanged = list(exchanged_state(model))
    base = model.get_base_model() if lora else model
    prefix = "self.base_model.model" if lora else "self"
    example = torch.randn(2, 3, img_size, img_size,
                          generator=torch.Generator().manual_seed(0))
    sources = {}
    was_training = model.training
    for (training, grad), mode in MODES.items():
        model.train(training)
        with torch.set_grad_enabled(grad):
            graph = _ValueTracer(base, example).trace_root()
        code = graph.python_code(root_module=prefix)
        sources[mode] = _with_imports(code)
    model.train(was_training)
    return TracedModel(_container(model), sources, lora, stats, exchanged)


class _ValueTracer(torch.fx.Tracer):
    """Symbolic tracing that also computes every node's value on an example input, so
    that Python control flow on a traced value can take the example's branch; each such
    decision is recorded as a run-time assertion in the traced code."""

    def __init__(self, root: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self._module, self._example = root, example
        self._inputs: list = []

    def trace_root(self) -> torch.fx.Graph:
        params = list(inspect.signature(self._module.forward).parameters.values())[1:]
        concrete = {p.name: p.default for p in params}  # everything but the input
        self._inputs = [self._example, *concrete.values()]
        return self.trace(self._module, concrete_args=concrete)

    def create_proxy(self, kind, target, args, kwargs, *rest, **kw):  # noqa: ANN001
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        from torch.fx._symbolic_trace import _maybe_revert_all_patches
        from torch.fx.node import map_aggregate

        def value(v: Any) -> Any:
            return v.node.meta["value"] if isinstance(v, torch.fx.Proxy) else v

        args, kwargs = map_aggregate(args, value), map_aggregate(kwargs, value)
        with _maybe_revert_all_patches():  # plain modules and attributes, not tracing
            if kind == "placeholder":
                result = self._inputs.pop(0)
            elif kind == "get_attr":
                result = _resolve(self._module, target)
            elif kind == "call_function":
                result = target(*args, **kwargs)
            elif kind == "call_method":
                result = getattr(args[0], target)(*args[1:], **kwargs)
            elif kind == "call_module":
                result = _resolve(self._module, target)(*args, **kwargs)
            else:
                result = None
        proxy.node.meta["value"] = result
        return proxy

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        taken = bool(obj.node.meta["value"])
        cond = obj if taken else self.create_proxy("call_function", operator.not_, (obj,), {})
        self.create_proxy("call_function", torch._assert,
                          (cond, "fedvit traced model: input unlike the traced one"), {})
        return taken


def _resolve(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        for store in (obj._modules, obj._parameters, obj._buffers, obj.__dict__):
            if part in store:
                obj = store[part]
                break
        else:
            raise AttributeError(f"{target}: no {part}")
    return obj


def _with_imports(code: Any) -> str:
    """The traced source with the names it uses bound at its top, each a torch or Python
    built-in object (anything else cannot be loaded with torch alone: refused)."""
    lines = []
    for name, obj in code.globals.items():
        if inspect.ismodule(obj):
            where = obj.__name__
            if where.split(".")[0] not in _GLOBAL_MODULES:
                raise ValueError(f"traced code uses module {where}")
            lines.append(f"{name} = __import__('importlib').import_module({where!r})")
        elif obj is type(None):
            lines.append(f"{name} = type(None)")
        elif isinstance(obj, float):  # inf, nan
            lines.append(f"{name} = float({str(obj)!r})")
        else:
            module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
            if module is None or module.split(".")[0] not in _GLOBAL_MODULES:
                raise ValueError(f"traced code uses {name} = {obj!r}")
            found = lookup(module, qual)
            if found is not obj:
                raise ValueError(f"traced code uses {name} = {obj!r}, not found by name")
            lines.append(f"{name} = __import__('fedvit.tracing', fromlist=['lookup'])"
                         f".lookup({module!r}, {qual!r})")
    return "\n".join(lines) + "\n" + code.src


def lookup(module: str, qualname: str) -> Any:
    """The object a dotted name names (what traced code binds its globals with).

    Args:
        module: an importable module, e.g. ``'torch.nn.functional'``.
        qualname: an attribute path in it, e.g. ``'linear'``.

    Returns:
        The object.

    Raises:
        ImportError, AttributeError: no such module or attribute.
    """
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _compile(src: str) -> Any:
    namespace: dict = {"__builtins__": builtins}
    exec(compile(src, "<fedvit traced model>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]


# ------------------------------------------------------------------ the module tree


def _is_building_block(module: nn.Module) -> bool:
    """A module the traced code calls as a whole: torch.nn's own (fx's default leaves)."""
    return torch.fx.Tracer().is_leaf_module(module, "")


def _container(module: nn.Module) -> nn.Module:
    """``module``'s tree with every module that is not a torch.nn building block replaced
    by a plain ``nn.Module`` holding the same parameters, buffers and children in the same
    order (the parameters themselves are shared, not copied)."""
    if _is_building_block(module):
        return module
    out = nn.Module()
    _adopt(out, module)
    for name, child in module._modules.items():
        out._modules[name] = None if child is None else _container(child)
    return out


def _adopt(target: nn.Module, source: nn.Module) -> None:
    target.training = source.training
    target._parameters.update(source._parameters)
    target._buffers.update(source._buffers)
    target._non_persistent_buffers_set.update(source._non_persistent_buffers_set)
    target._modules.update(source._modules)


def safe_globals() -> list:
    """What a traced model's file may hold besides tensors.

    Returns:
        The classes ``torch.load(..., weights_only=True)`` may build: torch.nn's module
        classes, ``TracedModel`` and ``set``.
    """
    classes = [nn.Module, TracedModel, set]
    for name in dir(nn):
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            classes.append(obj)
    return classes
