"""vit_exp: train, fine-tune and evaluate Vision Transformers with Lightning and Hydra.

Entry points: ``python train.py`` / ``python eval.py`` (Hydra, configs in ``conf/``), or the same as
``vit-train`` / ``vit-eval``. The models in ``vit_exp.models`` are plain torch and usable on their own.

Nothing heavy is imported here, so that ``python train.py --cfg job`` answers at once.
"""

__version__ = "0.1.0"
