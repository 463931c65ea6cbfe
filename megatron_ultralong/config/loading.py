"""Reading recipes: YAML files with their ``base`` chain, dotted overrides, type coercion, paths, dumping.

    cfg = load_recipe("toy_cpt", ["train.max_steps=10", "parallel.tp=2"])   # a Config, not yet validated
    cfg = config_from_dict(meta["config"])                                  # e.g. from checkpoint metadata
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional

import yaml

from .schema import Config, ConfigError

__all__ = [
    "RECIPES_DIR", "RETIRED_SECTIONS", "PATH_KEYS", "load_recipe", "config_from_dict", "parse_overrides",
    "list_recipes", "absolute_paths", "to_dict", "dump_recipe", "stated_keys",
]


RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

RETIRED_SECTIONS = ("eval",)
"""Top-level sections that configs saved by earlier versions carry and nothing reads any more (``eval``: the
eval tools take their grid on the command line). ``config_from_dict`` drops them; a recipe naming one is refused."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check / convert one YAML value against a field's type hint; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list, e.g. {where}=[1,2]")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads '1e-5' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}={value!r}: expected a string")
    return value


def _build(cls, data: Dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else \
                f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _deep_merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_recipe_path(name: str, relative_to: Optional[Path]) -> Path:
    candidates = []
    for folder in ([relative_to] if relative_to else []) + [RECIPES_DIR]:
        for n in (name, f"{name}.yaml"):
            candidates.append(folder / n)
    candidates.insert(0, Path(name))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"recipe '{name}' not found (looked in {relative_to or '.'} and {RECIPES_DIR}); "
                      f"pass a path to a .yaml file or one of: {', '.join(list_recipes())}")


def list_recipes() -> List[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_yaml_tree(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: recipe 'base' chain loops back to itself; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ConfigError(f"{path}{':' + str(line + 1) if line is not None else ''}: invalid YAML "
                          f"({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: Dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _read_yaml_tree(_resolve_recipe_path(b, path.parent), seen + (path,)))
    return _deep_merge(merged, data)


def parse_overrides(overrides: List[str]) -> Dict[str, Any]:
    """['train.max_steps=10', 'parallel.tp=2'] -> {'train': {'max_steps': 10}, 'parallel': {'tp': 2}}."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "." not in key:
            raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.max_steps=10")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
        node[parts[-1]] = value
    return out


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Build a Config from a nested mapping (unknown keys and wrong types raise ConfigError; RETIRED_SECTIONS
    of configs saved by earlier versions are dropped)."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in RETIRED_SECTIONS}
    return _build(Config, data, "")


def load_recipe(path: Optional[str | os.PathLike], overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML recipe (with its `base` chain), apply dotted overrides, return a Config (not yet validated)."""
    data = _read_yaml_tree(_resolve_recipe_path(str(path), None)) if path else {}
    data = _deep_merge(data, parse_overrides(list(overrides or [])))
    for section in RETIRED_SECTIONS:
        if section in data:
            raise ConfigError(f"recipe section '{section}' was removed (nothing read it); delete it from the recipe "
                              f"and overrides (the eval tools take --lengths / --depths / --out)")
    return config_from_dict(data)


def stated_keys(path: Optional[str | os.PathLike], overrides: Optional[List[str]] = None) -> FrozenSet[str]:
    """Dotted keys ('model.rope_theta') a recipe (with its ``base`` chain) or an override sets explicitly; a key
    left to its schema default is not among them. train/stage.py tells inherited values from stated ones by it."""
    data = _read_yaml_tree(_resolve_recipe_path(str(path), None)) if path else {}
    data = _deep_merge(data, parse_overrides(list(overrides or [])))

    def leaves(node: Dict[str, Any], prefix: str):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return frozenset(leaves(data, ""))


PATH_KEYS = ("train.run_dir", "checkpoint.dir", "checkpoint.init_from", "data.tokenizer", "data.paths",
             "data.eval_files")
"""Recipe keys that hold file-system paths (``absolute_paths`` resolves them)."""


def absolute_paths(cfg: Config, base: Optional[str | os.PathLike] = None) -> Config:
    """A copy of ``cfg`` with every PATH_KEYS value made absolute against ``base`` (default: the working directory).
    The trainer applies it at launch, so the run's saved config.yaml and checkpoint metadata name the same files
    from any directory (converters and later stages read them from elsewhere)."""
    base = os.fspath(base) if base is not None else os.getcwd()

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return os.path.normpath(os.path.join(base, os.path.expanduser(value))) if value else value

    sections = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = absolute(getattr(getattr(cfg, section), name))
    return dataclasses.replace(cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **vals)
                                       for sec, vals in sections.items()})


def to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def dump_recipe(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    from ..atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
