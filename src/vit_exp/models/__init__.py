"""ViT models: torch only (no Lightning, no Hydra), so that they can be used on their own.

``resolve_spec`` turns a model name and its overrides into one ``ModelSpec`` (architecture name, constructor
arguments, preprocessing, published weights); ``create_model`` builds it.
"""

from vit_exp.models.checkpoint import load_checkpoint, load_state_dict_file
from vit_exp.models.spec import (
    PREPROCESSING,
    ModelSpec,
    Preprocessing,
    PretrainedCfg,
    create_model,
    get_pretrained_cfg,
    resolve_pretrained_cfg,
    resolve_spec,
)
from vit_exp.models.variants import (
    FAMILIES,
    Weights,
    list_families,
    list_models,
    list_pretrained,
    resolve_name,
)
from vit_exp.models.vit import VisionTransformer

__all__ = [
    "FAMILIES",
    "PREPROCESSING",
    "ModelSpec",
    "Preprocessing",
    "PretrainedCfg",
    "VisionTransformer",
    "Weights",
    "create_model",
    "get_pretrained_cfg",
    "list_families",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_state_dict_file",
    "resolve_name",
    "resolve_pretrained_cfg",
    "resolve_spec",
]
