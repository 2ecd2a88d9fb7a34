"""ViT models: torch only (no Lightning, no Hydra), so that they can be used on their own."""

from vit_exp.models.checkpoint import load_checkpoint, load_state_dict_file
from vit_exp.models.variants import (
    FAMILIES,
    PretrainedCfg,
    create_model,
    get_pretrained_cfg,
    list_families,
    list_models,
    resolve_name,
    resolve_pretrained_cfg,
)
from vit_exp.models.vit import VisionTransformer

__all__ = [
    "FAMILIES",
    "PretrainedCfg",
    "VisionTransformer",
    "create_model",
    "get_pretrained_cfg",
    "list_families",
    "list_models",
    "load_checkpoint",
    "load_state_dict_file",
    "resolve_name",
    "resolve_pretrained_cfg",
]
