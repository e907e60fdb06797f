"""Resuming a run only with the settings it was started with: one comparison for every trainer (the AR loop's
checkpoints, the tokenizer trainer's state file). A changed key outside the trainer's allow-list is an error that
names each key with its saved and its current value; nothing is resumed under settings it was not trained with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_MISSING = "<absent>"


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested mapping (lists and other values are leaves)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def changed_keys(saved: Mapping, now: Mapping, allowed: Iterable[str] = ()) -> dict[str, tuple]:
    """{dotted key: (saved value, current value)} of every leaf that differs, except keys in `allowed`."""
    old, new, allowed = flatten(saved), flatten(now), set(allowed)
    keys = sorted((set(old) | set(new)) - allowed)
    return {k: (old.get(k, _MISSING), new.get(k, _MISSING)) for k in keys
            if old.get(k, _MISSING) != new.get(k, _MISSING)}


def refuse_changed_config(saved: Mapping, now: Mapping, allowed: Iterable[str], where) -> None:
    """Raise ValueError when `now` differs from the `saved` settings of the run in `where` outside `allowed`."""
    allowed = sorted(allowed)
    diff = changed_keys(saved, now, allowed)
    if diff:
        listed = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in diff.items())
        raise ValueError(f"cannot resume {where}: the settings differ from the saved run's in {len(diff)} key(s): "
                         f"{listed}. Only these may change on resume: {allowed}. Use another run/out dir, or the "
                         f"saved values")
