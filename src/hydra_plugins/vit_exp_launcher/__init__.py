"""Hydra launchers of vit_exp (Hydra finds plugins in the ``hydra_plugins`` namespace package only)."""
