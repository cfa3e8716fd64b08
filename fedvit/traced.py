"""The built model, cached on disk as a torch-only artefact: a ClientApp process that
finds it loads it with torch alone, without importing timm, peft (and, through them,
torchvision, ``torch._dynamo`` and transformers: about 3 s of every fresh process).

In a Flower 1.41 deployment every message runs in a fresh ClientApp process, which used
to rebuild the model with timm and peft each time. timm and peft stay the source of
truth: on a cache miss the model is built with them (``fedvit.model.build_model``) and
traced with ``torch.fx`` into plain Python code over torch operations; the artefact holds
that code and the model's own modules and parameters, in the same tree under the same
names, with every module that is not a ``torch.nn`` building block replaced by a plain
container. The forward depends on the mode (``FusedLoraLinear`` folds the adapters into
the weight in evaluation without gradients), so it is traced once per (train/eval,
gradients on/off) combination and the matching code runs. Control flow on a traced value
(e.g. timm's position-embedding resampling, taken only for another image size) follows
the example input and leaves a run-time guard in the code, so an input unlike the traced
one fails loudly instead of computing something else.

A new artefact is kept only after it was checked against a second, fresh timm+peft build:
same parameter and buffer names in the same order, the same values bit for bit, the same
trainable set, the same backbone fingerprint and input statistics, the same outputs in
training and in evaluation, and the same result of one training step (loss and every
exchanged tensor, bit for bit). The cache key covers everything the model depends on
(``model_key``); hub weights (``pretrained``) are never cached, as they can change under
the same name. The artefact's code is executed when loaded, like any pickle: keep
``$FEDVIT_CACHE`` writable only by its owner.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import operator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedvit.config import PUBLIC_PRETRAIN, AppConfig, cache_dir, resolve_path
from fedvit.files import atomic_path
from fedvit.tensors import backbone_fingerprint, exchanged_state, input_stats, is_lora

TRACED_FORMAT = 1  # bump when what an artefact holds or how it is traced changes
# Run-config keys the built model depends on (tests/test_coldstart.py classifies the rest).
MODEL_KEYS = ("strategy", "model-name", "img-size", "patch-size", "pretrained", "seed",
              "weights-path", "lora-r", "lora-alpha", "lora-dropout", "lora-target-modules",
              "lora-aggregation")
# Code whose change must invalidate artefacts: how the model is built, traced, answered.
SOURCES = ("model.py", "traced.py", "tensors.py")
MODES = {(True, True): "train", (True, False): "train-no-grad",
         (False, True): "eval-grad", (False, False): "eval"}
_GLOBAL_MODULES = ("builtins", "math", "operator", "torch")  # what traced code may call

log = logging.getLogger(__name__)


class TracedModel(nn.Module):
    """A model traced from its timm+peft build: the same module tree (containers in place
    of non-``torch.nn`` modules), the same parameters under the same names, and a forward
    that runs the traced code of the current mode."""

    def __init__(self, tree: nn.Module, sources: dict[str, str], lora: bool,
                 stats: tuple[tuple, tuple]) -> None:
        super().__init__()
        _adopt(self, tree)
        self.fedvit_lora = lora
        self.fedvit_input_stats = (tuple(stats[0]), tuple(stats[1]))
        self._sources = dict(sources)
        self._compile_sources()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forwards[MODES[(self.training, torch.is_grad_enabled())]](self, x)

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


# ------------------------------------------------------------------------- the cache


def cached_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """The model ``fedvit.model.build_model`` builds, loaded from the traced cache when it
    is there; otherwise built with timm+peft, traced, checked and cached (the built model
    is returned then)."""
    path = model_path(cfg, num_classes)
    if path is not None and path.is_file():
        try:
            return load(path)
        except Exception as err:  # a damaged or foreign file: rebuild it
            log.warning("fedvit: traced model %s unreadable (%s); rebuilding", path, err)
    from fedvit.model import build_model

    model = build_model(cfg, num_classes)
    path = model_path(cfg, num_classes)  # the backbone may have been built just now
    if path is not None:
        try:
            save_checked(model, cfg, num_classes, path)
        except Exception as err:  # not traceable: fine, just not cached
            log.warning("fedvit: model not cached (%s: %s)", type(err).__name__, err)
    return model


def model_key(cfg: AppConfig, num_classes: int) -> dict | None:
    """Everything the built model depends on, or None when it must not be cached (hub
    weights, or a weights file that is not there yet)."""
    if cfg.pretrained:
        return None
    values = dataclasses.asdict(cfg)
    key: dict = {"format": TRACED_FORMAT, "num-classes": num_classes,
                 "config": {k: values[k.replace("-", "_")] for k in MODEL_KEYS}}
    if cfg.weights_path:
        if cfg.weights_path == PUBLIC_PRETRAIN:
            from fedvit.pretrain import backbone_path

            weights = backbone_path(cfg)
        else:
            weights = resolve_path(cfg.weights_path)
        if not weights.is_file():
            return None
        st = weights.stat()
        key["weights"] = [str(weights), st.st_size, st.st_mtime_ns]
    key["libraries"] = {"torch": torch.__version__,
                        **{name: metadata.version(name) for name in ("timm", "peft")}}
    here = Path(__file__).parent
    key["code"] = hashlib.sha256(b"".join((here / f).read_bytes() for f in SOURCES)
                                 ).hexdigest()
    return key


def model_path(cfg: AppConfig, num_classes: int) -> Path | None:
    """The artefact's file under ``$FEDVIT_CACHE/models``, or None (not cacheable)."""
    key = model_key(cfg, num_classes)
    if key is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{cfg.model_name}-{digest}.pt"


def load(path: Path) -> TracedModel:
    """A traced model from its file (torch only; the file may hold only ``torch.nn``
    modules and tensors, and its code may call only torch and Python built-ins)."""
    with torch.serialization.safe_globals(_safe_globals()):
        saved = torch.load(path, weights_only=True)
    if saved.get("format") != TRACED_FORMAT:
        raise ValueError(f"format {saved.get('format')} is not {TRACED_FORMAT}")
    return TracedModel(saved["tree"], saved["sources"], saved["lora"], saved["stats"])


def save_checked(model: nn.Module, cfg: AppConfig, num_classes: int, path: Path) -> None:
    """Trace ``model`` (a fresh build), write it, load it back and keep the file only if
    the loaded model equals a second fresh build in everything (see the module's doc)."""
    from fedvit.model import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    # The global random state is left as the build left it.
    with torch.random.fork_rng(devices=[]), atomic_path(path) as tmp:
        traced = trace(copy.deepcopy(model), cfg.img_size)
        torch.save({"format": TRACED_FORMAT, "tree": _container(traced),
                    "sources": traced._sources, "lora": traced.fedvit_lora,
                    "stats": traced.fedvit_input_stats}, tmp)
        check_same(load(tmp), build_model(cfg, num_classes), cfg)


def check_same(loaded: nn.Module, built: nn.Module, cfg: AppConfig) -> None:
    """Raise ``AssertionError`` unless ``loaded`` and the fresh ``built`` model are the
    same model: names, order, values, trainables, outputs, and one training step."""
    from fedvit.train import PhaseClock, make_optimizer, train_step

    mine, theirs = loaded.state_dict(), built.state_dict()
    _check(list(mine) == list(theirs), "state dict names or order differ")
    for k, v in theirs.items():
        _check(_bits_equal(mine[k], v), f"value of {k} differs")
    _check([(n, p.requires_grad) for n, p in loaded.named_parameters()]
           == [(n, p.requires_grad) for n, p in built.named_parameters()],
           "parameters or trainables differ")
    _check(list(exchanged_state(loaded)) == list(exchanged_state(built)),
           "exchanged tensors differ")
    _check(is_lora(loaded) == is_lora(built), "LoRA or not differs")
    _check(backbone_fingerprint(loaded) == backbone_fingerprint(built), "fingerprint differs")
    _check(input_stats(loaded) == input_stats(built), "input statistics differ")
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(5, 3, cfg.img_size, cfg.img_size, generator=gen)
    for training in (True, False):
        for grad in (True, False):
            loaded.train(training)
            built.train(training)
            outputs = []
            for model in (loaded, built):
                torch.manual_seed(cfg.seed)  # the same dropout masks, if any
                with torch.set_grad_enabled(grad):
                    outputs.append(model(x))
            _check(_bits_equal(*outputs), f"outputs differ ({MODES[(training, grad)]})")
    labels = torch.randint(0, 2, (5,), generator=gen)
    results = []
    for model in (loaded, built):
        model.train()
        torch.manual_seed(cfg.seed)
        loss = train_step(model, make_optimizer(model, cfg.learning_rate), x, labels,
                          PhaseClock(cuda=False), bf16=False)
        results.append((loss, exchanged_state(model)))
    _check(_bits_equal(results[0][0], results[1][0]), "first step's loss differs")
    for k, v in results[1][1].items():
        _check(_bits_equal(results[0][1][k], v), f"{k} after one step differs")


# ------------------------------------------------------------------------- tracing


def trace(model: nn.Module, img_size: int) -> TracedModel:
    """``model`` (consumed: its parameters move into the result) traced in every mode."""
    lora = is_lora(model)
    stats = input_stats(model)
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
    return TracedModel(_container(model), sources, lora, stats)


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
            found = _lookup(module, qual)
            if found is not obj:
                raise ValueError(f"traced code uses {name} = {obj!r}, not found by name")
            lines.append(f"{name} = __import__('fedvit.traced', fromlist=['_lookup'])"
                         f"._lookup({module!r}, {qual!r})")
    return "\n".join(lines) + "\n" + code.src


def _lookup(module: str, qualname: str) -> Any:
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


def _safe_globals() -> list:
    """What an artefact's file may hold besides tensors: torch.nn module classes."""
    classes = [nn.Module, TracedModel, set]
    for name in dir(nn):
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            classes.append(obj)
    return classes


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.detach().reshape(-1).view(torch.uint8),
                            b.detach().reshape(-1).view(torch.uint8)))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"traced model differs from its timm+peft build: {what}")

