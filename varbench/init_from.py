"""`train.init_from=PATH`: start a training run from the weights of another model, also one with another mixer.

The source is an official checkpoint (VAR, M-VAR, AiM: varbench/official.py) or a varbench one (a model.safetensors,
a checkpoint folder or a run directory: its latest checkpoint). Its tensors are renamed to varbench's names (the
official converters' tables, derived buffers dropped); then every tensor of the new model with the same name and
shape is loaded, and the rest keep the recipe's initialisation. So VAR-d16's weights start an M-VAR-d16 or a GLA
model: embeddings, AdaLN, FFNs, head (and, where the names agree, the mixer) load; a new mixer is initialised.

The outcome is an `InitReport`: the tensors loaded, initialised (absent from the source), skipped (same name, other
shape: e.g. the class table of a model with other classes) and the source's tensors left unused. task=train logs it,
records it (`init_from` in results_dir/train.jsonl) and writes it into the run spec of every checkpoint. A source that
matches no tensor at all is an error. Resume wins: a run with a checkpoint continues from it and ignores init_from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from varbench import official
from varbench.runs import find_checkpoint
from varbench.utils.checkpoint import read_state_dict
from varbench.utils.hashing import file_sha256
from varbench.utils.run_spec import read_spec


@dataclass
class InitReport:
    """What `init_from` did: the source's identity and the fate of every tensor."""

    source: str                      # the weight file read
    sha256: str
    format: str                      # varbench | official_var | official_mvar | official_aim
    loaded: list[str] = field(default_factory=list)        # model tensors taken from the source
    initialised: list[str] = field(default_factory=list)   # model tensors the source lacks: the recipe's init
    skipped: list[str] = field(default_factory=list)       # "name: source (shape) vs model (shape)", recipe's init
    unused: list[str] = field(default_factory=list)        # source tensors with no same-named model tensor
    tokenizer_sha256: str | None = None                    # the tokenizer the source was trained with, when known

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A human-readable account, every list in full (the log keeps it)."""
        lines = [f"init_from {self.source} ({self.format}, sha256 {self.sha256}): {len(self.loaded)} tensors loaded, "
                 f"{len(self.initialised) + len(self.skipped)} initialised by the recipe, {len(self.unused)} of the "
                 f"source unused"]
        for title, names in (("loaded", self.loaded), ("initialised (absent from the source)", self.initialised),
                             ("initialised (shape differs, skipped)", self.skipped), ("unused", self.unused)):
            lines.append(f"  {title} ({len(names)}): " + (", ".join(names) if names else "-"))
        return "\n".join(lines)


def source_tensors(source) -> tuple[dict[str, torch.Tensor], InitReport]:
    """The tensors of `source` under varbench names, and a report naming the file (lists still empty)."""
    weights = find_checkpoint(source)
    state = read_state_dict(weights)
    kind = official.official_kind(state)
    spec = read_spec(weights.parent) if kind is None else None
    report = InitReport(source=str(weights), sha256=file_sha256(weights),
                        format=f"official_{kind}" if kind else "varbench",
                        tokenizer_sha256=spec["tokenizer"]["sha256"] if spec else None)
    return (official.renamed(state, kind) if kind else state), report


def init_from(model: nn.Module, source) -> InitReport:
    """Load into `model` every tensor of `source` with the same (converted) name and shape; see the module docstring.
    Raises ValueError when no tensor matches (a source for another kind of model)."""
    tensors, report = source_tensors(source)
    own = model.state_dict()
    for name, target in own.items():
        if name not in tensors:
            report.initialised.append(name)
        elif tuple(tensors[name].shape) != tuple(target.shape):
            report.skipped.append(f"{name}: source {tuple(tensors[name].shape)} vs model {tuple(target.shape)}")
        else:
            report.loaded.append(name)
    report.unused = sorted(set(tensors) - set(own))
    if not report.loaded:
        raise ValueError(f"train.init_from={source}: no tensor of {report.source} ({report.format}) has a name and "
                         f"shape of this model; is it a checkpoint of this kind of model (scale-wise vs raster)?")
    with torch.no_grad():
        for name in report.loaded:
            own[name].copy_(tensors[name].to(own[name].dtype))  # state_dict tensors share the model's storage
    return report


def check_tokenizer(report: InitReport, tokenizer_file: Path | str) -> None:
    """A varbench source records its tokenizer: fine-tuning on another one's codes would start from a model of other
    tokens. Official sources record none (their official tokenizer is the user's to give)."""
    if report.tokenizer_sha256 is None:
        return
    sha = file_sha256(tokenizer_file)
    if sha != report.tokenizer_sha256:
        raise ValueError(f"train.init_from={report.source} was trained with a tokenizer of sha256 "
                         f"{report.tokenizer_sha256}, this run's ({tokenizer_file}) has sha256 {sha}: set "
                         f"tokenizer.checkpoint to the source's tokenizer")
