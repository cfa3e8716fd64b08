"""The built model as safetensors plus a ``torch.export`` program per mode: a ClientApp process
(one per message in Flower 1.41) loads it without timm and peft. ``torch.export.load`` trusts its
file (sympy parsing, may fall back to pickle): keep ``$FEDVIT_CACHE`` writable only by its owner."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from fedvit.config.appconfig import AppConfig
from fedvit.config.paths import PUBLIC_PRETRAIN, cache_dir, resolve_path
from fedvit.files import atomic_path
from fedvit.model.pretrain import backbone_path
from fedvit.model.tensors import backbone_fingerprint, exchanged_state, input_stats, is_lora
from fedvit.model.train import PhaseClock, make_optimizer, train_step

FORMAT = 3  # bump when what an artefact holds or how it is exported changes
# Run-config keys the built model depends on (tests/e2e/test_coldstart.py classifies the rest).
MODEL_KEYS = ("strategy", "model-name", "img-size", "patch-size", "pretrained", "seed",
              "weights-path", "lora-r", "lora-alpha", "lora-dropout", "lora-target-modules",
              "lora-aggregation")
# Code whose change must invalidate artefacts: how the model is built, exported, answered.
SOURCES = ("build.py", "backbone.py", "tensors.py", "cache.py")
MODES = {"train": (True, True), "eval": (False, False)}  # mode: (training, gradients)

log = logging.getLogger(__name__)


class ExportedModel(nn.Module):
    """A cached model: the build's parameters and buffers (names, order, trainables) and the
    ``fedvit.model.tensors`` answers recorded at export. A mode's program (only the batch size
    dynamic) loads when the model first switches to it (``torch.export.load`` imports
    ``torch._dynamo``, as the optimizer does anyway). A bad file: ``OSError``, ``KeyError``,
    ``ValueError`` (another ``FORMAT``), ``SafetensorError``, ``JSONDecodeError``."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open
        super().__init__()
        with safe_open(path, "pt") as f:
            info = json.loads(f.metadata()["fedvit"])
            if info["format"] != FORMAT:
                raise ValueError(f"format {info['format']} is not {FORMAT}")
            for name, kind in info["state"]:  # state-dict order: the build's tree again
                *parents, leaf = name.split(".")
                module = self
                for part in parents:
                    module = module._modules.setdefault(part, nn.Module())
                tensor = f.get_tensor(name)
                if kind == "buffer":
                    module.register_buffer(leaf, tensor)
                else:
                    module.register_parameter(leaf, nn.Parameter(tensor, kind == "trainable"))
        self.fedvit_lora = bool(info["lora"])
        self.fedvit_input_stats = (tuple(info["stats"][0]), tuple(info["stats"][1]))
        self.fedvit_exchanged = tuple(info["exchanged"])
        self._programs, self._graphs = mode_paths(path), {}

    def train(self, mode: bool = True) -> ExportedModel:
        # Loads the program here, outside any compiled region (``compile`` compiles forward).
        super().train(mode)
        self._graph("train" if mode else "eval")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float32 -> ``(B, num_classes)``; ``RuntimeError``: eval mode with
        gradients (not exported); ``AssertionError``: another size ``S`` (a program guard)."""
        if not self.training and torch.is_grad_enabled():
            raise RuntimeError("an exported model evaluates only without gradients "
                               "(torch.no_grad); train mode trains")
        mode = "train" if self.training else "eval"
        graph = self._graphs.get((mode, next(self.parameters()).device))
        return (graph if graph is not None else self._graph(mode))(x)

    def _graph(self, mode: str) -> nn.Module:
        """``mode``'s program on the parameters' device, made to read this model's tensors."""
        device = next(self.parameters()).device
        graph = self._graphs.get((mode, device))
        if graph is None:
            # Python's cyclic collector paused: the load's many objects would set off collections
            # that walk all of torch's (default training program: 0.64 -> 0.49 s).
            collecting = gc.isenabled()
            try:
                gc.disable()
                with open(self._programs[mode], "rb") as f:  # a file object: any name is fine
                    program = torch.export.load(f)
                if device.type != "cpu":  # the program holds the device it was exported on
                    from torch.export.passes import move_to_device_pass
                    program = move_to_device_pass(program, device)
                graph = self._graphs[(mode, device)] = program.module()
            finally:
                if collecting:
                    gc.enable()
        for name, tensor in (*self.named_parameters(), *self.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            setattr(graph.get_submodule(owner), leaf, tensor)  # ours, not the file's copy
        return graph


def cached_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """``build_model``'s model (CPU): an ``ExportedModel`` on a hit, else the build, cached if it
    exports and checks (else a warning; a damaged artefact is rebuilt); raises as the build."""
    path = model_path(cfg, num_classes)
    if path is not None and all(f.is_file() for f in (path, *mode_paths(path).values())):
        try:
            return ExportedModel(path)
        except Exception as err:  # a damaged or foreign file: rebuild it
            log.warning("fedvit: cached model %s unreadable (%s); rebuilding", path, err)
    from fedvit.model.build import build_model  # imports timm and peft: only on a miss
    model = build_model(cfg, num_classes)
    path = model_path(cfg, num_classes)  # the backbone may have been built just now
    if path is not None:
        try:
            save_checked(model, cfg, num_classes, path)
        except Exception as err:  # not exportable: fine, just not cached
            log.warning("fedvit: model not cached (%s: %s)", type(err).__name__, err)
    return model


def model_key(cfg: AppConfig, num_classes: int) -> dict | None:
    """Everything the built model depends on (JSON-able), or None when it must not be cached:
    hub weights (they can change under one name) or a weights file not there yet."""
    if cfg.pretrained:
        return None
    values = dataclasses.asdict(cfg)
    key: dict = {"format": FORMAT, "num-classes": num_classes,
                 "config": {k: values[k.replace("-", "_")] for k in MODEL_KEYS}}
    if cfg.weights_path:
        weights = (backbone_path(cfg) if cfg.weights_path == PUBLIC_PRETRAIN
                   else resolve_path(cfg.weights_path))
        if not weights.is_file():
            return None
        stat = weights.stat()
        key["weights"] = [str(weights), stat.st_size, stat.st_mtime_ns]
    key["libraries"] = {"torch": torch.__version__, "timm": metadata.version("timm"),
                        "peft": metadata.version("peft")}
    code = b"".join((Path(__file__).parent / f).read_bytes() for f in SOURCES)
    return key | {"code": hashlib.sha256(code).hexdigest()}


def model_path(cfg: AppConfig, num_classes: int) -> Path | None:
    """The tensors' file, or None when not cacheable (``model_key``)."""
    if (key := model_key(cfg, num_classes)) is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{cfg.model_name}-{digest}.safetensors"


def mode_paths(path: Path) -> dict[str, Path]:
    return {mode: path.with_name(path.name.replace(".safetensors", f".{mode}.pt2"))
            for mode in MODES}


def save_checked(model: nn.Module, cfg: AppConfig, num_classes: int, path: Path) -> None:
    """Export a fresh build in every mode and write it atomically, kept only if, loaded back, it
    equals a second build (``check_same``: else ``AssertionError``); ``model`` and the global
    RNG stay as they were. Not exportable: ``torch._dynamo.exc.UserError``, ``RuntimeError``."""
    from safetensors.torch import save_file

    from fedvit.model.build import build_model
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    kinds = {n: "trainable" if p.requires_grad else "frozen" for n, p in model.named_parameters()}
    state = model.state_dict()
    info = {"format": FORMAT, "lora": is_lora(model), "stats": input_stats(model),
            "exchanged": list(exchanged_state(model)),
            "state": [(name, kinds.get(name, "buffer")) for name in state]}
    example = torch.randn(2, 3, cfg.img_size, cfg.img_size,
                          generator=torch.Generator().manual_seed(0))
    batch = torch.export.ShapesCollection()
    batch[example] = {0: torch.export.Dim("batch")}  # any batch size
    with torch.random.fork_rng(devices=[]), ExitStack() as files:
        tmp = files.enter_context(atomic_path(path))
        save_file({k: v.detach().clone() for k, v in state.items()}, tmp,
                  metadata={"fedvit": json.dumps(info)})
        for mode, (training, grad) in MODES.items():
            model.train(training)
            with torch.set_grad_enabled(grad):
                program = torch.export.export(model, (example,), dynamic_shapes=batch)
            with open(files.enter_context(atomic_path(mode_paths(path)[mode])), "wb") as f:
                torch.export.save(program, f)
        model.train(was_training)
        check_same(ExportedModel(tmp), build_model(cfg, num_classes), cfg)


def check_same(loaded: nn.Module, built: nn.Module, cfg: AppConfig) -> None:
    """``AssertionError`` naming the first difference, bit for bit, between ``loaded`` and a
    fresh ``built`` model: state, trainables, ``fedvit.model.tensors`` answers, outputs in each
    mode on a seeded input, one training step's loss and tensors (both are left trained)."""
    def same(ours: dict, theirs: dict) -> None:
        for what, value in theirs.items():
            mine = ours.get(what)
            if isinstance(value, torch.Tensor):
                ok = (isinstance(mine, torch.Tensor) and mine.dtype == value.dtype
                      and mine.shape == value.shape
                      and torch.equal(mine.detach().reshape(-1).view(torch.uint8),
                                      value.detach().reshape(-1).view(torch.uint8)))
            else:
                ok = mine == value
            if not ok:
                raise AssertionError(f"cached model differs from its timm+peft build: {what}")
    same(loaded.state_dict(), built.state_dict())
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(5, 3, cfg.img_size, cfg.img_size, generator=gen)
    labels = torch.randint(0, 2, (5,), generator=gen)
    runs = []
    for model in (loaded, built):
        run = {"state dict names": list(model.state_dict()),
               "trainables": [(n, p.requires_grad) for n, p in model.named_parameters()],
               "exchanged names": list(exchanged_state(model)), "LoRA": is_lora(model),
               "fingerprint": backbone_fingerprint(model), "input stats": input_stats(model)}
        for mode, (training, grad) in MODES.items():
            model.train(training)
            torch.manual_seed(cfg.seed)  # the same dropout masks, if any
            with torch.set_grad_enabled(grad):
                run[f"output ({mode})"] = model(x)
        model.train()
        torch.manual_seed(cfg.seed)
        run["first step's loss"] = train_step(model, make_optimizer(model, cfg.learning_rate),
                                              x, labels, PhaseClock(cuda=False), bf16=False)
        runs.append(run | {f"{k} after one step": v for k, v in exchanged_state(model).items()})
    same(*runs)
