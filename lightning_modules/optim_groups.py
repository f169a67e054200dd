"""Optimiser parameter groups with a larger learning rate for normalisation layers.

airbench (Keller Jordan, github.com/KellerJordan/cifar10-airbench, ``legacy/airbench94.py``)
trains the batch-norm biases at 64x the learning rate of the other weights with
the weight decay divided by 64, so that the decay per step (lr x wd) is the same
for every parameter. ``norm_lr_scale`` does that for any optimiser whose
groups take ``lr`` and ``weight_decay``.
"""

from __future__ import annotations

from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_parameter_ids(module: nn.Module) -> set[int]:
    """ids of the parameters that belong to normalisation layers (batch / group / layer / instance norm)."""
    return {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}


def split_norm_groups(groups: list[dict], module: nn.Module) -> list[dict]:
    """Each group split into its normalisation parameters (tagged ``"norm": True``) and the rest."""
    norm = norm_parameter_ids(module)
    out = []
    for group in groups:
        params = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        for is_norm in (True, False):
            chosen = [p for p in params if (id(p) in norm) == is_norm]
            if chosen:
                out.append({**rest, "params": chosen, "norm": is_norm})
    return out


def scale_norm_groups(optimizer, scale: float) -> None:
    """Multiply the lr of the groups tagged ``norm`` by ``scale`` and divide their weight decay by it."""
    for group in optimizer.param_groups:
        if group.get("norm"):
            group["lr"] *= scale
            if "weight_decay" in group:
                group["weight_decay"] /= scale
