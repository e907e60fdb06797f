"""Resuming a run only with the settings it was started with: one comparison for every trainer (the AR loop's
checkpoints, the tokenizer trainer's state file). A changed key outside the trainer's allow-list is an error that
names each key with its saved and its current value; nothing is resumed under settings it was not trained with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_MISSING = "<absent>"
# keys added to the configs after runs were recorded, each with the value that computes what those runs computed:
# a grid cell's id leaves such a key out at that value (varbench.grid.cell_id), and a run saved before the key
# existed resumes under it at that value
ADDED_KEYS_AT_OLD_BEHAVIOUR = {"train.compile_scope": "model", "train.tf32": False, "train.compile_mode": "default",
                               "mixer.together_below": 64, "mixer.sdpa_kernels": None, "mixer.qk_norm": "auto",
                               "intra.together_below": 64, "intra.sdpa_kernels": None, "intra.qk_norm": "auto"}
# keys that choose how a kernel tiles the same sum (mamba2's fit_chunk: a step's one-chunk scan over fewer padded rows),
# never what is computed: a grid cell is the same cell, and a run resumes, at any of their values
TILING_KEYS = ("mixer.fit_chunk",)


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
    """{dotted key: (saved value, current value)} of every leaf that differs, except keys in `allowed`; a key
    `saved` lacks that was added later counts as saved at its old behaviour (ADDED_KEYS_AT_OLD_BEHAVIOUR)."""
    old, new, allowed = flatten(saved), flatten(now), set(allowed)
    old = {**{k: v for k, v in ADDED_KEYS_AT_OLD_BEHAVIOUR.items() if k in new and k.split(".")[0] in saved}, **old}
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
