"""The built model, cached on disk as its tensors and ``torch.export`` programs: a
ClientApp process that finds them loads the model with torch alone, without importing timm
and peft (and, through them, torchvision and transformers).

In a Flower 1.41 deployment every message runs in a fresh ClientApp process. timm and
peft stay the source of truth: on a miss the model is built with them
(``fedvit.model.build.build_model``) and exported with ``torch.export.export`` once per mode the
app runs it in, training (train mode, gradients on) and evaluation (eval mode, gradients
off: ``FusedLoraLinear`` folds the adapters into the weight there). ``torch.export.save``
writes each program as a serialised graph of ATen operations; the tensors go into a
safetensors file. No file holds Python source; loading deserialises the graph
(``torch.export.load``, which trusts the file it reads: it parses shape expressions with
``sympy.sympify`` and may fall back to pickle, so keep ``$FEDVIT_CACHE`` writable only by
its owner). A process loads only the program of the mode it runs, when it first switches
to it (``torch.export.load`` imports ``torch._dynamo``, which torch's optimizer would
import anyway). Shapes other than the batch size are fixed at export: another image size
fails.

A new artefact is kept only after it was checked against a second, fresh timm+peft build
(``check_same``). The key covers everything the model depends on (``model_key``); hub
weights (``pretrained``) are never cached, as they can change under the same name.
``fedvit.model.build`` imports timm and peft, so it is imported only on a miss.
"""

from __future__ import annotations

import dataclasses
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
SOURCES = ("build.py", "backbone.py", "adapters.py", "tensors.py", "cache.py")
MODES = {"train": (True, True), "eval": (False, False)}  # mode: (training, gradients)

log = logging.getLogger(__name__)


class ExportedModel(nn.Module):
    """A model loaded from the cache: the build's parameters and buffers under the same
    names, in the same order, with the same trainables; its forward runs the training
    program in train mode and the evaluation program in eval mode without gradients (eval
    mode with gradients was not exported: ``RuntimeError``). It carries what
    ``fedvit.model.tensors`` answers for its build, recorded when it was exported.

    Args:
        path: the artefact's tensors (``model_path``); ``mode_paths`` names its programs.

    Raises:
        OSError, safetensors.SafetensorError, KeyError, json.JSONDecodeError: a missing,
            damaged or foreign file.
        ValueError: another ``FORMAT``.
    """

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
        """Set the mode and load its program if this process has not yet (outside any
        compiled region: ``compile`` = true compiles ``forward`` only)."""
        super().train(mode)
        self._graph("train" if mode else "eval")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The build's forward.

        Args:
            x: ``(B, 3, S, S)`` float32 normalised images, ``S`` the exported image size.

        Returns:
            ``(B, num_classes)`` logits.

        Raises:
            RuntimeError: eval mode with gradients on.
            AssertionError: an input of another image size (a guard of the program).
        """
        if not self.training and torch.is_grad_enabled():
            raise RuntimeError("an exported model evaluates only without gradients "
                               "(torch.no_grad); train mode trains")
        mode = "train" if self.training else "eval"
        graph = self._graphs.get((mode, next(self.parameters()).device))
        return (self._graph(mode) if graph is None else graph)(x)

    def _graph(self, mode: str) -> nn.Module:
        """The program of ``mode`` on the parameters' device (loaded on first use), made to
        read this model's tensors."""
        device = next(self.parameters()).device
        graph = self._graphs.get((mode, device))
        if graph is None:
            with open(self._programs[mode], "rb") as f:  # a file object: any name is fine
                program = torch.export.load(f)
            if device.type != "cpu":  # the program holds the device it was exported on
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            graph = self._graphs[(mode, device)] = program.module()
        for name, tensor in (*self.named_parameters(), *self.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            setattr(graph.get_submodule(owner), leaf, tensor)  # ours, not the file's copy
        return graph


def cached_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """The model ``fedvit.model.build.build_model`` builds, loaded from the cache when it is
    there; otherwise built with timm+peft, exported, checked and cached (the built model
    is returned then). A damaged artefact is rebuilt; a model that cannot be exported or
    checked is only not cached (both logged as warnings).

    Args:
        cfg: the run config.
        num_classes: the classifier's outputs.

    Returns:
        An ``ExportedModel`` (a hit) or the timm/peft build (a miss), on the CPU.

    Raises:
        ConfigError: as ``build_model`` raises.
    """
    path = model_path(cfg, num_classes)
    if path is not None and all(f.is_file() for f in (path, *mode_paths(path).values())):
        try:
            return ExportedModel(path)
        except Exception as err:  # a damaged or foreign file: rebuild it
            log.warning("fedvit: cached model %s unreadable (%s); rebuilding", path, err)
    from fedvit.model.build import build_model

    model = build_model(cfg, num_classes)
    path = model_path(cfg, num_classes)  # the backbone may have been built just now
    if path is not None:
        try:
            save_checked(model, cfg, num_classes, path)
        except Exception as err:  # not exportable: fine, just not cached
            log.warning("fedvit: model not cached (%s: %s)", type(err).__name__, err)
    return model


def model_key(cfg: AppConfig, num_classes: int) -> dict | None:
    """Everything the built model depends on.

    Args:
        cfg: the run config (``MODEL_KEYS`` are read).
        num_classes: the classifier's outputs.

    Returns:
        A JSON-able dict (format, classes, model keys, the weights file's path, size and
        mtime, torch/timm/peft versions, a digest of ``SOURCES``), or None when the model
        must not be cached (hub weights, or a weights file that is not there yet).
    """
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
        st = weights.stat()
        key["weights"] = [str(weights), st.st_size, st.st_mtime_ns]
    key["libraries"] = {"torch": torch.__version__,
                        **{name: metadata.version(name) for name in ("timm", "peft")}}
    here = Path(__file__).parent
    key["code"] = hashlib.sha256(b"".join((here / f).read_bytes() for f in SOURCES)
                                 ).hexdigest()
    return key


def model_path(cfg: AppConfig, num_classes: int) -> Path | None:
    """The artefact's tensors; ``mode_paths`` names its programs.

    Args:
        cfg: the run config.
        num_classes: the classifier's outputs.

    Returns:
        ``$FEDVIT_CACHE/models/<model-name>-<key digest>.safetensors``, or None (not
        cacheable, see ``model_key``).
    """
    key = model_key(cfg, num_classes)
    if key is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{cfg.model_name}-{digest}.safetensors"


def mode_paths(path: Path) -> dict[str, Path]:
    """``{mode: program file}`` of the artefact whose tensors are ``path``
    (``<name>.safetensors`` -> ``<name>.<mode>.pt2``)."""
    return {mode: path.with_name(path.name.replace(".safetensors", f".{mode}.pt2"))
            for mode in MODES}


def save_checked(model: nn.Module, cfg: AppConfig, num_classes: int, path: Path) -> None:
    """Export ``model`` in every mode, write it, load it back and keep the files only if
    the loaded model equals a second fresh build in everything (``check_same``). The
    global random state is left as the build left it.

    Args:
        model: a fresh ``build_model(cfg, num_classes)`` (left as it was).
        cfg: the run config it was built from.
        num_classes: the classifier's outputs.
        path: the artefact's tensors (``model_path``; written atomically, as are its
            programs; the folder is created).

    Raises:
        AssertionError: the loaded model differs from the fresh build (no file is kept).
        torch._dynamo.exc.UserError, RuntimeError: the model cannot be exported.
    """
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
    """Check that ``loaded`` and the fresh ``built`` model are the same model: names,
    order, values, trainables, exchanged tensors, fingerprint, input statistics, outputs
    in every mode on a seeded ``(5, 3, img-size, img-size)`` input, and one training step
    (loss and exchanged tensors), all bit for bit. Both models are left trained by it.

    Args:
        loaded: the model loaded from the new artefact.
        built: a second, fresh timm+peft build.
        cfg: the run config (image size, seed, learning rate).

    Raises:
        AssertionError: naming the first difference.
    """
    def answers(model: nn.Module) -> dict:
        return {"state dict names": list(model.state_dict()),
                "trainables": [(n, p.requires_grad) for n, p in model.named_parameters()],
                "exchanged names": list(exchanged_state(model)), "LoRA": is_lora(model),
                "fingerprint": backbone_fingerprint(model), "input stats": input_stats(model)}

    _check_same(answers(loaded), answers(built))
    _check_same(loaded.state_dict(), built.state_dict())
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(5, 3, cfg.img_size, cfg.img_size, generator=gen)
    labels = torch.randint(0, 2, (5,), generator=gen)
    runs = []
    for model in (loaded, built):
        run = {}
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
    _check_same(*runs)


def _check_same(ours: dict, theirs: dict) -> None:
    """Raise ``AssertionError`` naming the first entry that differs (tensors bit for bit)."""
    for what, value in theirs.items():
        mine = ours.get(what)
        if isinstance(value, torch.Tensor):
            same = (isinstance(mine, torch.Tensor) and mine.dtype == value.dtype
                    and mine.shape == value.shape
                    and torch.equal(mine.detach().reshape(-1).view(torch.uint8),
                                    value.detach().reshape(-1).view(torch.uint8)))
        else:
            same = mine == value
        if not same:
            raise AssertionError(f"cached model differs from its timm+peft build: {what}")
