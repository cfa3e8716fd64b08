"""The model a strategy trains: the plain timm ViT (``fedavg``) or the same ViT with peft
LoRA adapters (``fedlora``), and the answer to "which tensors travel".

The client, the server, the size report and the tests all ask this module (or the
torch-only ``fedvit.model.tensors``, whose answers it re-exports) which tensors a strategy
exchanges instead of re-deriving it.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from fedvit.config.appconfig import AppConfig, raise_errors
from fedvit.config.paths import PUBLIC_PRETRAIN, resolve_path
from fedvit.config.rules import target_modules
from fedvit.model.adapters import freeze_ffa
from fedvit.model.backbone import (
    adaptable_linears,
    check_model,
    create_vit,
    load_backbone_weights,
    lora_target_errors,
)
from fedvit.model.pretrain import public_backbone
from fedvit.model.tensors import (  # noqa: F401  (re-exported: the torch-only answers)
    HEAD,
    backbone_fingerprint,
    count_parameters,
    exchanged_state,
    input_stats,
    is_lora,
    load_exchanged,
)


def build_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """The model a strategy trains: a plain ViT (``fedavg``) or a LoRA-wrapped one.

    Everything is seeded, so the frozen backbone and the initial adapters are
    bit-identical on the server and on every client. A weights file (or the public
    backbone, built first if missing) replaces the backbone; the head is then a fresh,
    seeded one for this task.

    Args:
        cfg: the run config (model, weights, LoRA and seed keys).
        num_classes: the classifier's outputs.

    Returns:
        A timm ViT or a ``peft.PeftModel`` around one, on the CPU, float32, taking
        ``(B, 3, img-size, img-size)`` normalised images and giving ``(B, num_classes)``
        logits.

    Raises:
        ConfigError: the model cannot be built at these sizes, the weights do not fit,
            or a rule only the built model can check is broken (``model_errors``).
    """
    model = create_vit(cfg, num_classes)
    check_model(cfg, model)
    if cfg.weights_path:
        if cfg.weights_path == PUBLIC_PRETRAIN:
            path, source = public_backbone(cfg), "'weights-path' (public pretraining)"
        else:
            path, source = resolve_path(cfg.weights_path), "'weights-path'"
        load_backbone_weights(model, path, source)
        torch.manual_seed(cfg.seed)
        model.reset_classifier(num_classes)  # a fresh, seeded head for this task
    if cfg.strategy == "fedavg":
        return model
    return wrap_lora(model, cfg)


def wrap_lora(model: nn.Module, cfg: AppConfig, fused: bool = True) -> PeftModel:
    """peft LoRA on the target modules; adapters and the head are the only trainables
    (FFA-LoRA: ``lora_A`` frozen too, ``fedvit.model.adapters.freeze_ffa``).

    Args:
        model: a plain timm ViT (consumed: peft wraps it in place).
        cfg: ``lora-r``, ``lora-alpha``, ``lora-dropout``, ``lora-target-modules``,
            ``lora-aggregation``, ``seed`` (the adapters' init).
        fused: use ``FusedLoraLinear``'s forward; False keeps peft's own (benchmarks).

    Returns:
        The peft model.

    Raises:
        ConfigError: a target module is not a linear layer of the model.
    """
    targets = target_modules(cfg.lora_target_modules)
    linear = adaptable_linears(model)
    raise_errors(lora_target_errors(cfg, {full.rsplit(".", 1)[-1] for full in linear}))
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
        freeze_ffa(peft_model)
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
        """The adapted layer, as peft's forward computes it.

        Args:
            x: ``(..., in_features)``.

        Returns:
            ``(..., out_features)``.
        """
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
