"""The plain timm ViT: built at the configured sizes, weights files loaded into it, and the
rules only the built model can check.

timm is imported inside the functions that build: a process that loads its model from the
cache (``fedvit.model.cache``) never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from fedvit.config.appconfig import AppConfig, ConfigError, raise_errors
from fedvit.config.rules import FITTING_WEIGHTS, target_modules
from fedvit.model.tensors import HEAD


def create_vit(cfg: AppConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """The plain timm ViT at the configured image and patch size, seeded with ``seed``.

    Args:
        cfg: ``model-name``, ``img-size``, ``patch-size``, ``seed``, ``pretrained``.
        num_classes: the classifier's outputs.
        pretrained: hub weights or not; None: as ``cfg.pretrained`` says.

    Returns:
        A timm ``VisionTransformer``, taking ``(B, 3, img-size, img-size)`` float32 and
        giving ``(B, num_classes)`` logits.

    Raises:
        ConfigError: timm cannot build the model at these sizes, or hub weights cannot
            be loaded.
    """
    import timm

    kwargs: dict = {"num_classes": num_classes, "img_size": cfg.img_size}
    if cfg.patch_size:
        kwargs["patch_size"] = cfg.patch_size
    torch.manual_seed(cfg.seed)
    use_hub = cfg.pretrained if pretrained is None else pretrained
    try:
        return timm.create_model(cfg.model_name, pretrained=use_hub, **kwargs)
    except Exception as err:
        if not use_hub:
            raise ConfigError(
                f"'model-name' = {cfg.model_name!r} cannot be built with 'img-size' = "
                f"{cfg.img_size}, 'patch-size' = {cfg.patch_size}: {err}"
            ) from err
        raise ConfigError(
            f"'pretrained' = true: hub weights for {cfg.model_name!r} could not be loaded "
            f"({type(err).__name__}: {err}); set 'weights-path' to a local file instead"
        ) from err


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file.

    Args:
        path: ``.safetensors``, or a torch checkpoint (``.pth``/``.pt``/``.bin``), whose
            state dict may sit under ``state_dict``, ``model`` or ``module``.

    Returns:
        ``{name: tensor}`` on the CPU, dtypes as stored.

    Raises:
        OSError, RuntimeError, pickle.UnpicklingError: the file cannot be read (torch
            files are read with ``weights_only=True``).
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return dict(obj)


def load_backbone_weights(model: nn.Module, path: Path, source: str) -> None:
    """Load a weights file into a timm ViT; only the classifier head may be left out (or
    be of another size: it is then skipped).

    Position and patch embeddings are resampled to the model's sizes (timm's own filter).

    Args:
        model: a plain timm ViT (``create_vit``).
        path: the weights file (``read_weights_file``).
        source: how the messages name the file, e.g. ``"'weights-path'"``.

    Raises:
        ConfigError: the file cannot be read or does not fit the model.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(read_weights_file(path), model)
    except Exception as err:
        raise ConfigError(f"{source} = {str(path)!r} cannot be read: {err}") from err
    own = model.state_dict()
    state = {
        k: v for k, v in state.items()
        if not (k.startswith(HEAD + ".") and k in own and own[k].shape != v.shape)
    }
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"{source} = {str(path)!r} does not fit the model: {err}; "
                          f"{FITTING_WEIGHTS}") from err
    missing = [k for k in missing if not k.startswith(HEAD + ".")]
    if missing or unexpected:
        raise ConfigError(
            f"{source} = {str(path)!r} does not fit the model: missing {len(missing)} "
            f"tensors {missing[:3]}, unexpected {len(unexpected)} {list(unexpected)[:3]}; "
            f"{FITTING_WEIGHTS}"
        )


def check_model(cfg: AppConfig, model: nn.Module) -> None:
    """Check what only the built ViT can show (``model_errors``).

    Args:
        cfg: the run config it was built from.
        model: the plain timm ViT (``create_vit``).

    Raises:
        ConfigError: listing every violation.
    """
    pe = model.patch_embed
    raise_errors(model_errors(
        cfg, tuple(pe.patch_size), tuple(pe.img_size) if pe.img_size else (0, 0),
        {full.rsplit(".", 1)[-1] for full in adaptable_linears(model)}))


def model_errors(cfg: AppConfig, patch_size: tuple[int, int], img_size: tuple[int, int],
                 linear_names: Iterable[str]) -> list[str]:
    """Rule violations only the resolved model can show (the server checks them before it
    writes anything).

    A size the model would crop (a strided convolution drops the remainder) or pad
    (``dynamic_img_pad``) is an error too: ``img-size`` must be a multiple of the patch.

    Args:
        cfg: the run config.
        patch_size: the model's (height, width) patch in pixels (``patch-size`` = 0 means
            the model's own).
        img_size: the (height, width) input it was built for, pixels.
        linear_names: its linear layers' short names (the LoRA targets it offers).

    Returns:
        One message per violation (none: all is well).
    """
    errors = []
    ph, pw = patch_size
    patch = (f"'patch-size' = {cfg.patch_size}" if cfg.patch_size
             else f"'patch-size' = 0 (the model's own patch size, {ph})")
    if img_size != (cfg.img_size, cfg.img_size):
        errors.append(
            f"'img-size' = {cfg.img_size} is not allowed with 'model-name' = "
            f"{cfg.model_name!r}: the model is built for {img_size[0]}x{img_size[1]} inputs; "
            f"must be {img_size[0]}")
    elif cfg.img_size % ph or cfg.img_size % pw:
        lo = max(ph, cfg.img_size // ph * ph)
        errors.append(
            f"'img-size' = {cfg.img_size} is not allowed with {patch} of "
            f"{cfg.model_name!r}: the model would crop or pad the input; must be a "
            f"multiple of {ph}, e.g. {lo} or {lo + ph}")
    if cfg.strategy == "fedlora":
        errors += lora_target_errors(cfg, linear_names)
    return errors


def lora_target_errors(cfg: AppConfig, linear_names: Iterable[str]) -> list[str]:
    """``lora-target-modules`` against the model's linear layers.

    Args:
        cfg: the run config.
        linear_names: the model's linear layers' short names (``adaptable_linears``).

    Returns:
        One message naming the targets that are not among them, the classifier head
        told apart (it is linear, but trained whole); none when all are.
    """
    names = set(linear_names)
    targets = target_modules(cfg.lora_target_modules)
    head = [t for t in targets if t == HEAD or t.startswith(HEAD + ".")]
    unknown = [t for t in targets if t not in names and t not in head]
    if not unknown and not head:
        return []
    why = ([f"{unknown} are not linear layers of {cfg.model_name!r}"] if unknown else []) + (
        [f"{head} is the classifier head, which is trained whole and exchanged in full, "
         "not adapted"] if head else [])
    return [f"'lora-target-modules' = {cfg.lora_target_modules!r} is not allowed: "
            f"{'; '.join(why)}; must name linear layers of the backbone, which are "
            f"{sorted(names)}"]


def adaptable_linears(model: nn.Module) -> list[str]:
    """The linear layers LoRA may adapt (the head is trained in full).

    Args:
        model: a plain timm ViT.

    Returns:
        Their full module names, in module order.
    """
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n != HEAD and not n.startswith(HEAD + ".")]
