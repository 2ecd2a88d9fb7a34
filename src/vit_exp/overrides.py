"""Command-line overrides checked before Hydra runs: a misspelt group, option or key gets the closest real one.

Hydra answers ``optm=sgd`` or ``trainer.max_epoch=3`` with advice to add ``+``, and ``+optm=sgd`` adds a key that
nothing reads (the run trains with AdamW). ``check_overrides`` composes the config the way ``hydra.main`` will
(the same search path, ``--config-dir`` and ``hydra.searchpath`` included) and raises ``ConfigError`` with the
nearest name (difflib). The rule for new keys:

- ``key=value`` must name a key that exists (or a config group);
- ``+a.b=value`` may add a key inside an existing top-level node (``+model.depth=2``, ``+callbacks.x._target_=...``),
  unless a key of that node is a near-spelling of it (``+trainer.max_epoch``: ``++`` adds it anyway);
- a new top-level key is refused, with ``+`` or ``++``: nothing reads it;
- ``hydra.*``, ``hydra/...`` and anything this module cannot parse are left to Hydra, which stays the authority.

Only Hydra and OmegaConf are imported: this runs before anything heavy, in about 0.1 s.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Iterable, Sequence
from typing import Any

# Hydra's private names, used here alone (checked on hydra-core 1.3.2): the argument parser and the search path
# of ``hydra.main``, so that this check composes exactly what the run will.
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vit_exp.errors import ConfigError

CUTOFF = 0.6  # difflib ratio for "did you mean"
NEAR = 0.85  # a new key this close to an existing one is taken for a typo


def check_overrides(argv: Sequence[str], conf_dir: str, config_name: str) -> DictConfig | None:
    """Check the overrides of a ``vit-train``/``vit-eval``/``vit-predict`` command line against the config.

    Args:
        argv: the command line after the program name (flags and overrides, as ``hydra.main`` reads them).
        conf_dir: the primary config directory (``vit_exp.cli.CONF_DIR``).
        config_name: the primary config (``train``, ``eval``, ``predict``), unless ``--config-name`` says otherwise.

    Returns:
        With ``--cfg``: the config as Hydra will show it (all overrides applied); otherwise None.

    Raises:
        ConfigError: an unknown group, option or key, or a new top-level key; the message names the closest real one.
    """
    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, _ = parser.parse_known_args(list(argv))
    except argparse.ArgumentError:
        return None  # Hydra reports it
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path:
        return None
    config_name = args.config_name or config_name
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return None
    search_path = create_config_search_path(conf_dir)
    extra = [f"file://{os.path.abspath(args.config_dir)}"] if args.config_dir else []
    extra += [p for o in overrides if o.key_or_group == "hydra.searchpath" for p in (o.value() or [])]
    for path in extra:  # after ours and before the schema source, where hydra.main puts them
        search_path.prepend(provider="command-line", path=path, anchor=SearchPathQuery(provider="schema"))
    ours = [o for o in overrides if not o.is_hydra_override()]
    try:
        hydra = Hydra.create_main_hydra2(task_name="check", config_search_path=search_path)
        groups = _groups(hydra.config_loader)
        group_overrides = [o for o in ours if o.key_or_group in groups]
        for o in group_overrides:
            _check_options(o, hydra.config_loader)
        # Compose with the group choices only (a sweep's first one): the key set that the key overrides must hit.
        chosen = [_first(o) if o.is_sweep_override() else o.input_line for o in group_overrides]
        hydra_lines = [o.input_line for o in overrides if o.is_hydra_override() and not o.is_sweep_override()]
        try:
            cfg = hydra.compose_config(config_name, [*chosen, *hydra_lines], run_mode=RunMode.RUN)
        except HydraException:
            return None  # Hydra will say why, with its own message
        top_groups = sorted(g for g in groups if "/" not in g and g != "hydra")
        for o in ours:
            if o not in group_overrides:
                _check_key(o, cfg, top_groups)
        if not args.cfg:
            return None
        try:
            return hydra.compose_config(config_name, list(args.overrides), run_mode=RunMode.RUN)
        except HydraException:
            return None
    finally:
        GlobalHydra.instance().clear()


def _check_options(o: Any, loader: Any) -> None:
    """A group override names an option of its group (``_``-prefixed files are shared bases, not options)."""
    if o.is_delete():
        return
    options = [x for x in loader.get_group_options(o.key_or_group) if not x.startswith("_")]
    for value in _values(o):
        if value is None or value in options:
            continue
        group = o.key_or_group
        base = f"; {value} is the shared base of the {group} options, not one of them" if value.startswith("_") else ""
        raise ConfigError(
            f"unknown option {group}={value}{base}{_suggest(value, options, lambda m: f'{group}={m}')}"
            f" (the {group} options: {', '.join(options)})"
        )


def _check_key(o: Any, cfg: DictConfig, top_groups: list[str]) -> None:
    """A key override names an existing key, or adds one inside an existing top-level node."""
    key = o.key_or_group
    parts = key.split(".")
    shown = o.input_line
    value = shown.split("=", 1)[1] if "=" in shown else "..."
    # A new top-level key (or a misspelt group): nothing reads it. (keys(): `in cfg` is False for a ??? value.)
    if parts[0] not in cfg.keys():
        names = top_groups + [k for k in cfg if k not in top_groups]
        match = difflib.get_close_matches(parts[0], names, n=1, cutoff=CUTOFF)
        if len(parts) == 1:
            fix = f"; did you mean {match[0]}={value}?" if match else f"; the config groups are {', '.join(top_groups)}"
            raise ConfigError(f"unknown config group {key} ({shown}){fix}")
        fix = f"; did you mean {'.'.join([match[0], *parts[1:]])}={value}?" if match else ""
        raise ConfigError(f"{key}: {parts[0]} is not a key or config group of this config ({shown}){fix}")
    adds = o.is_add() or o.is_force_add()
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):  # walk to the parent of the last key
        if part not in node.keys():  # a node that is not there: misspelt, or (with +) a new one
            if not adds:
                _unknown_key(".".join(parts[: i + 1]), node, key, value)
            return
        if OmegaConf.is_missing(node, part):
            return  # ??? on the way: Hydra's own message is the right one
        child = node.get(part)
        if child is None and not adds:
            path = ".".join(parts[: i + 1])
            raise ConfigError(
                f"{path} is null in this config (switched off), so {key} has nothing to set; write +{key}={value} to "
                f"add it (or give {path} whole, e.g. {path}='{{{parts[i + 1]}: ...}}')"
            )
        if not isinstance(child, DictConfig):
            return  # a list, a value, or a null that + fills: Hydra's own message is the right one
        node = child
    parent, last = ".".join(parts[:-1]), parts[-1]
    if last in node.keys() or o.is_delete() or o.is_force_add():
        return  # an existing key; a deletion (Hydra names a missing one); ++: added whatever its name
    if o.is_add():
        near = difflib.get_close_matches(last, [str(k) for k in node], n=1, cutoff=NEAR)
        if near:
            raise ConfigError(
                f"{shown} adds a key beside {parent}.{near[0]}; did you mean {parent}.{near[0]}={value}? "
                f"(++{key}={value} adds it anyway)"
            )
        return
    _unknown_key(key, node, key, value)


def _unknown_key(path: str, node: DictConfig, key: str, value: str) -> None:
    """Raise for ``path``, a key that ``node`` (its parent) lacks, on the way to the override's ``key``: the
    closest key of the parent, or its keys."""
    parent, last = path.rsplit(".", 1)
    rest = key[len(path) :]  # what follows the misspelt node in the override (nothing when it is the last key)
    match = difflib.get_close_matches(last, [str(k) for k in node], n=1, cutoff=CUTOFF)
    fix = f"did you mean {parent}.{match[0]}{rest}={value}?" if match else f"its keys: {', '.join(map(str, node))}"
    raise ConfigError(f"{path} is not a key of {parent}; {fix} (to add a new key, write +{key}={value})")


def _groups(loader: Any, parent: str = "") -> set[str]:
    """Every config group of the search path, nested ones as ``a/b``."""
    found = set()
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        found |= {path} | _groups(loader, path)
    return found


def _values(o: Any) -> Iterable[Any]:
    """The option(s) of a group override: one, or each choice of a sweep (``model=vit_base,vit_large``)."""
    if o.is_sweep_override():
        try:
            return list(o.sweep_string_iterator())
        except Exception:  # glob(...) and the like: expanded by Hydra against the options, not checked here
            return []
    value = o.value()
    return value if isinstance(value, list) else [value]


def _first(o: Any) -> str:
    """``group=first choice`` of a sweep override (or the override itself when its choices are not listed)."""
    values = _values(o)
    return f"{o.get_key_element()}={values[0]}" if values else o.input_line


def _suggest(name: str, choices: Iterable[str], fmt: Any) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=CUTOFF)
    return f"; did you mean {fmt(match[0])}?" if match else ""
