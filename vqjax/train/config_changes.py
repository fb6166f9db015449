"""What a resumed run changes in its workdir's config.json, and which changes are refused.

Resuming with another learning rate or more steps is a normal thing to do; resuming with another
model, quantizer, data set or batch size makes the checkpoint's history mean something else (or
fail to load), so those are refused unless the user says so (`--allow_config_change`).
"""

from __future__ import annotations

import json
from typing import Any

# Settings whose change makes a resumed run another experiment (dotted prefixes).
BREAKING = ("family", "model", "quantizer", "disc", "tokenizer_dir", "data.source", "data.name",
            "data.image_size", "data.channels", "data.batch_size")


def flatten(tree: Any, prefix: str = "") -> dict:
    """{'section.field': value} of a config as JSON (tuples as lists)."""
    if isinstance(tree, dict):
        return {k: v for key, item in tree.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) of every field whose value differs, sorted. A field the
    saved config lacks (a setting added to vqjax since) is not a change."""
    old, new = flatten(saved), flatten(json.loads(json.dumps(current)))
    return [(k, old.get(k, "(unset)"), new.get(k, "(unset)")) for k in sorted(set(old) | set(new))
            if k in old and old.get(k) != new.get(k)]


def is_breaking(field: str) -> bool:
    return any(field == p or field.startswith(p + ".") for p in BREAKING)


def describe(found: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{field} {old!r} -> {new!r}" for field, old, new in found)


def check_resume(saved: dict, current: dict, config_path: str, allow: bool) -> list[str]:
    """Notes for the log about a resumed run's changed settings; a ValueError naming the
    refused ones unless `allow`."""
    found = changes(saved, current)
    breaking = [c for c in found if is_breaking(c[0])]
    if breaking and not allow:
        raise ValueError(
            f"This config differs from {config_path}, the one the run in this workdir was started "
            f"with, in settings that change what it trains: {describe(breaking)}. Resume with the "
            "original settings, start a new --workdir (with --config.init_from=<this workdir> to "
            "begin from its weights), or pass --allow_config_change to resume anyway.")
    return [f"settings changed since the run started: {describe(found)}"] if found else []
