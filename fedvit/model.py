"""Model construction (timm ViT, peft LoRA) and the answer to "which tensors travel".

The client, the server, the size report and the tests all ask this module which tensors a
strategy exchanges instead of re-deriving it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from fedvit.config import PUBLIC_PRETRAIN, AppConfig, ConfigError, resolve_path, target_modules
from fedvit.tensors import (  # noqa: F401  (re-exported: the torch-only answers)
    HEAD,
    backbone_fingerprint,
    count_parameters,
    exchanged_state,
    input_stats,
    is_lora,
    load_exchanged,
)


def create_vit(cfg: AppConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """The plain timm ViT at the configured image and patch size (seeded init)."""
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
    """A state dict from ``.safetensors`` or a torch checkpoint (``.pth``/``.pt``/``.bin``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return dict(obj)


def load_backbone_weights(model: nn.Module, path: Path, source: str) -> None:
    """Load a weights file into a timm ViT; only the classifier head may be left out.

    Position and patch embeddings are resampled to the model's sizes (timm's own filter).
    Raises ``ConfigError`` when the file does not fit the model.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    from fedvit.config import FITTING_WEIGHTS

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


def build_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """The model a strategy trains: a plain ViT (``fedavg``) or a LoRA-wrapped one.

    Everything is seeded, so the frozen backbone and the initial adapters are
    bit-identical on the server and on every client.
    """
    model = create_vit(cfg, num_classes)
    check_model(cfg, model)
    if cfg.weights_path:
        if cfg.weights_path == PUBLIC_PRETRAIN:
            from fedvit.pretrain import public_backbone

            path, source = public_backbone(cfg), "'weights-path' (public pretraining)"
        else:
            path, source = resolve_path(cfg.weights_path), "'weights-path'"
        load_backbone_weights(model, path, source)
        torch.manual_seed(cfg.seed)
        model.reset_classifier(num_classes)  # a fresh, seeded head for this task
    if cfg.strategy == "fedavg":
        return model
    return wrap_lora(model, cfg)


def check_model(cfg: AppConfig, model: nn.Module) -> None:
    """Raise ``ConfigError`` listing what only the built (plain timm) ViT can show: its
    patch size, the input size it was built for, the LoRA target modules."""
    from fedvit.config import model_errors, raise_errors

    pe = model.patch_embed
    raise_errors(model_errors(
        cfg, tuple(pe.patch_size), tuple(pe.img_size) if pe.img_size else (0, 0),
        {full.rsplit(".", 1)[-1] for full in _adaptable_linears(model)}))


def wrap_lora(model: nn.Module, cfg: AppConfig, fused: bool = True) -> PeftModel:
    """peft LoRA on the target modules; adapters and the head are the only trainables.

    ``fused`` uses ``FusedLoraLinear``'s forward; ``False`` keeps peft's own (benchmarks).
    """
    targets = target_modules(cfg.lora_target_modules)
    linear = _adaptable_linears(model)
    names = {full.rsplit(".", 1)[-1] for full in linear}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ConfigError(
            f"'lora-target-modules' = {cfg.lora_target_modules!r} is not allowed: "
            f"{unknown} are not linear layers of {cfg.model_name!r}; its linear layers "
            f"are {sorted(names)}"
        )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        # Full names of linear layers only: "proj" must not also catch patch_embed.proj.
        target_modules=[full for full in linear if full.rsplit(".", 1)[-1] in targets],
        modules_to_save=[HEAD],
    )
    if fused:
        lora._register_custom_module({nn.Linear: FusedLoraLinear})
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora)
    if cfg.lora_aggregation == "ffa":  # FFA-LoRA: A stays at its shared seeded init
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return peft_model


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer with a leaner forward for plain LoRA.

    peft computes ``base(x) + B(A(x)) * s`` as five operations, two of them full passes
    over the output (the scaling and the sum). This computes the same with two matrix
    products and one ``addmm`` that scales and adds in the same kernel; on a small ViT the
    saved passes are a visible share of the step. In evaluation (eval mode, no autograd) it
    folds the adapter into the weight instead, ``W + s·B·A`` (out × in, no per-token work),
    so evaluating a LoRA model costs what evaluating the plain ViT does; the stored weights
    are never touched. Anything else (merged or disabled adapters, several adapters,
    adapter biases, DoRA and other variants) goes through peft's own forward.
    Parameter names and state dicts are peft's.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
                or active[0] not in self.lora_A or active[0] in self.lora_variant
                or self.lora_bias[active[0]]):
            return super().forward(x, *args, **kwargs)
        name = active[0]
        base = self.base_layer
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        scale = self.scaling[name]
        if not self.training and not torch.is_grad_enabled():
            weight = torch.addmm(base.weight, lora_b, lora_a, alpha=scale)
            return nn.functional.linear(x, weight, base.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = nn.functional.linear(flat, base.weight, base.bias)
        down = nn.functional.linear(self.lora_dropout[name](flat), lora_a)
        out = torch.addmm(out, down, lora_b.t(), alpha=scale)
        return out.view(x.shape[:-1] + out.shape[-1:])


def _adaptable_linears(model: nn.Module) -> list[str]:
    """Full names of the linear layers LoRA may adapt (the head is trained in full)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n != HEAD and not n.startswith(HEAD + ".")]
