"""Paper profiles: switch the whole pipeline to one of the paper's settings in one command.

A profile is a task-and-dataset file (``configs/paper/<task>_<dataset>.yaml``: networks, epochs, batch
sizes, optimisers, schedules, loss weights and TDP/CQMix settings from shared/SR4IR_METHOD.md) plus an SR
file (``configs/paper/sr/{edsr,swinir}.yaml``: the architecture and its released DIV2K weights per scale)
and a scale. Applying one writes params.yaml as **the defaults + the profile**: nothing from earlier edits
survives, so a profile always means the same run. Comments and key order in params.yaml are kept.

    python -m src.profile list
    python -m src.profile show  configs/paper/seg_voc.yaml --scale 8 --sr edsr   # what would change
    python -m src.profile apply configs/paper/seg_voc.yaml --scale 8 --sr edsr   # then: dvc repro

``git checkout params.yaml`` returns to the embedded default study. ``dvc exp run`` works after ``apply``
as after any params edit.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from src.config import PARAMS_FILE, ConfigError, Params, parse_params
from src.utils import write_text_atomic

PROFILES = Path("configs/paper")
SR_CHOICES = ("edsr", "swinir")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: profile not found (python -m src.profile list shows the profiles)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params at the top level")
    return data


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` into a copy of ``base``; nested sections merge, anything else (lists, dict-valued params
    such as ``loss_weights`` or ``tdp_layers``) is replaced whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and not _is_leaf_mapping(k):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_leaf_mapping(key: str) -> bool:
    return key in {"loss_weights", "tdp_layers"}  # params whose value is a mapping: never merged key by key


def resolve(profile: Path | str, scale: int, sr: str, root: Path = PROFILES) -> dict[str, Any]:
    """The full params mapping of a profile: the defaults + task file + SR file + scale and sr.init."""
    if sr not in SR_CHOICES:
        raise ConfigError(f"--sr: {sr!r} is not one of {list(SR_CHOICES)}")
    profile = Path(profile)
    task_part = _read(profile)
    sr_file = root / "sr" / f"{sr}.yaml"
    sr_part = _read(sr_file)
    inits = sr_part.pop("init", {}) or {}
    if scale not in inits:
        raise ConfigError(f"{sr_file}: init: no released weights listed for x{scale} (have {sorted(inits)})")
    raw = Params().model_dump(mode="json", exclude={"seed"})  # seed is derived from seeds, not a file key
    for part in (task_part, sr_part, {"degrade": {"scale": scale}, "sr": {"init": inits[scale]}}):
        raw = _merge(raw, part)
    parse_params(raw, profile)  # a profile that does not validate names its key
    return raw


def changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs."""
    out = []
    for k in new:
        key = f"{prefix}{k}"
        a, b = old.get(k), new[k]
        if isinstance(a, Mapping) and isinstance(b, Mapping) and not _is_leaf_mapping(k):
            out += changes(a, b, key + ".")
        elif a != b:
            out.append((key, a, b))
    return out


def _assign(node: Any, new: Mapping[str, Any]) -> None:
    """Set every differing leaf of ``new`` in the round-trip YAML ``node`` (comments stay where they are)."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(node.get(k), Mapping) and not _is_leaf_mapping(k):
            _assign(node[k], v)
        elif node.get(k) != v:
            node[k] = _flow(v)


def _represent_float(dumper: Any, value: float) -> Any:
    """Floats as YAML 1.1 reads them back as floats: ``1.0e-06``, not ``1e-06`` (a string to PyYAML)."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


def _flow(v: Any) -> Any:
    """Lists and mappings written inline (``[4, 7]``, ``{loss_ce: 1.0}``), as params.yaml writes them."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(v, Mapping):
        out: Any = CommentedMap((k, _flow(x)) for k, x in v.items())
    elif isinstance(v, list):
        out = CommentedSeq(_flow(x) for x in v)
    else:
        return v
    out.fa.set_flow_style()
    return out


def apply(profile: Path | str, scale: int, sr: str, params_path: Path = Path(PARAMS_FILE),
          root: Path = PROFILES) -> list[tuple[str, Any, Any]]:
    """Write the profile into ``params_path`` (atomically, validated); return what changed."""
    from ruamel.yaml import YAML

    target = resolve(profile, scale, sr, root)
    yml = YAML()
    yml.preserve_quotes = True
    yml.width = 4096
    yml.representer.add_representer(float, _represent_float)
    doc = yml.load(params_path.read_text())
    current = yaml.safe_load(params_path.read_text()) or {}
    diff = changes(current, target)
    _assign(doc, target)
    buf = io.StringIO()
    yml.dump(doc, buf)
    written = yaml.safe_load(buf.getvalue())
    if parse_params(written, params_path) != parse_params(target, profile):  # never write a different study
        raise ConfigError(f"{params_path}: could not express the profile in this file")
    write_text_atomic(params_path, buf.getvalue())
    return diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the profiles under configs/paper")
    for name, what in (("show", "print what applying would change"), ("apply", "write the profile into params.yaml")):
        s = sub.add_parser(name, help=what)
        s.add_argument("profile", type=Path, help="configs/paper/<task>_<dataset>.yaml")
        s.add_argument("--scale", type=int, choices=(2, 4, 8), default=8, help="SR scale (default 8: the published numbers)")
        s.add_argument("--sr", choices=SR_CHOICES, default="edsr", help="SR network (default edsr: EDSR-baseline)")
        s.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file to write (default params.yaml)")
    return p


def _show(diff: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in diff) or "  (nothing: params already hold this profile)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for f in sorted(PROFILES.glob("*.yaml")):
                head = f.read_text().splitlines()[0].lstrip("# ")
                print(f"{f}  {head}")
            return 0
        if args.command == "show":
            target = resolve(args.profile, args.scale, args.sr)
            print(_show(changes(yaml.safe_load(args.params.read_text()) or {}, target)))
            return 0
        diff = apply(args.profile, args.scale, args.sr, args.params)
        print(f"{args.params}: {args.profile.stem} x{args.scale} {args.sr}; {len(diff)} values changed:\n{_show(diff)}")
        print("next: dvc repro   (git checkout params.yaml returns to the default study)")
        return 0
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
