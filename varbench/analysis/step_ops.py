"""Where a training step's GPU time goes, by kind of kernel (`step_ops_table`; issue 18: "say what holds the rest of
the step (the recorded top operators)").

From task=bench's `train_images_per_s` records whose profile accounts for the whole step (`timing.top_ops`): since
session 27 every operator has its row (`timing.ops_listed: all`); from session 24 the top 15 and, in a last row, all
the others together, which stay "not listed". Each operator is put in one kind by its name, the first that matches
(`KINDS`). Inductor names a fused kernel after the aten ops it fuses (`triton_poi_fused_gelu_gelu_backward_view_4`),
so its kind says what it holds: the loss, a LayerNorm (with the AdaLN modulation Inductor fuses into it), a GELU, the
q/k L2 normalisation (F.normalize's `clamp_min`), or other element-wise work. Beside them the step's median wall
time: busy close to it means the GPU never waited on the host, so the step shortens only by moving fewer bytes or
doing fewer FLOPs."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.load import mode_label, var_numerics_training

log = logging.getLogger(__name__)

# (kind, name fragments), first match wins: attention before GEMMs (Inductor names its flex templates "triton_tem_"),
# the q/k normalisation's own kernels (varbench/ops/qk_norm) before the mixers' custom ops, a LayerNorm before the
# GELU or the L2 normalisation fused with it (its kernel is a reduction over the width)
QK_NORM = "q/k L2 norm"
KINDS = (("Attention", ("flex_attention", "_cudnn_attention", "_flash_attention", "_efficient_attention")),
         ("GEMMs", ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_mm", "triton_tem_fused_mm")),
         (QK_NORM, ("varbench::qkv_l2_norm",)),
         ("Mixer kernels", ("varbench::", "_varbench_", "DaoAILab::", "_layer_norm_fwd", "_layer_norm_bwd")),
         ("Optimizer", ("adamw", "_foreach_")),
         ("Loss (log-softmax, NLL)", ("_log_softmax", "nll_loss")),
         ("LayerNorm", ("native_layer_norm",)),
         ("GELU", ("gelu",)),
         (QK_NORM, ("clamp_min", "linalg_vector_norm")),
         ("Other fused element-wise (Inductor)", ("triton_poi", "triton_red", "triton_per")),
         ("Other element-wise, copies (aten)", ("aten::",)))
OTHER, NOT_LISTED = "Other listed", "Not listed"
CALL = ["commit", "device", "model", "batch", "compiled", "compile_scope", "compile_mode"]


def kind_of(op: str) -> str:
    """The kind of kernel an operator's name says it is (`KINDS`), else "Other listed"."""
    return next((kind for kind, fragments in KINDS if any(f in op for f in fragments)), OTHER)


def _by_kind(top_ops: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in top_ops:
        kind = NOT_LISTED if row["op"].startswith("(the other ") else kind_of(row["op"])
        out[kind] = out.get(kind, 0.0) + row["ms_per_step"]
    return out


def _complete(timing) -> bool:
    """Whether a record's profile accounts for the whole step: every operator listed, or the rest in a last row."""
    ops = timing.get("top_ops") if isinstance(timing, dict) else None
    return bool(ops) and (timing.get("ops_listed") == "all" or ops[-1]["op"].startswith("(the other "))


def step_ops_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (commit and GPU), configuration, batch and compilation (scope, Inductor mode): the training step's
    median (ms), its GPU busy time (ms, the profile's operators summed) and that time by kind of kernel (ms per
    step). VAR's numerics only."""
    train = var_numerics_training(df)
    train = train[train["timing"].map(_complete)]
    if train.empty:
        log.warning("step_ops_table: no training record accounts for its step's operators (timing.top_ops, all of "
                    "them or with a last row for the rest, since session 24)")
        return pd.DataFrame()
    train = train.sort_values("date", kind="stable").drop_duplicates([*CALL, "inductor_options"], keep="last")
    kinds = pd.DataFrame([_by_kind(t["top_ops"]) for t in train["timing"]]).fillna(0.0)
    columns = list(dict.fromkeys(k for k, _ in KINDS if k in kinds)) + [c for c in (OTHER, NOT_LISTED) if c in kinds]
    table = kinds[columns].rename(columns=lambda c: f"{c} (ms)")
    table.insert(0, "Busy (ms)", kinds.sum(axis=1))
    table.insert(0, "Step (ms)", [t["median_ms"] for t in train["timing"]])
    table.index = pd.MultiIndex.from_frame(
        train[CALL].assign(batch=train["batch"].astype(int), compile_scope=train["compile_scope"].where(
            train["compiled"].eq(True), "eager"), compile_mode=mode_label(train)).drop(columns="compiled"),
        names=["Commit", "GPU", "Model", "Batch", "Compiled", "Mode"])
    table.attrs.update(device=None, records=len(train))
    return table.sort_index()
