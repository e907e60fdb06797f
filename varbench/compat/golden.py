"""Golden parity: run varbench on the inputs of a golden folder and compare with the official outputs.

A golden folder (like shared/golden/setA) holds `config.json` (the official constructor arguments) and
safetensors files: `{tokenizer,var,mvar}_state_dict` (official key names) and `{tokenizer,var,mvar}_io`.
An AiM folder (like shared/golden/aim_setC, part `aim`) holds `config.json` (`mamba_config`, `vq`, `cfg_scale`),
`aim_state_dict` / `tokenizer_state_dict` (official keys) and `aim_io` / `tokenizer_io` (its README).
Nothing here hard-codes a size: everything is built from config.json.
Tolerances are those of the golden README section 6 (fp32 on CPU); AiM's those of the aim_setC README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

PARTS = ("tokenizer", "var", "mvar")  # the default: a VAR / M-VAR folder (setA)
ALL_PARTS = (*PARTS, "aim")           # `aim` reads an AiM folder (aim_setC) instead
TOL_LATENT = 3e-5   # f_BChw, recon, logits: 4-10x the fp32 noise measured against float64
TOL_FHAT = 1e-5     # fhat_cumulative, x_BLCv_wo_first_l
TOL_GUIDED = 1e-4   # CFG-guided cached logits: guidance amplifies errors by up to 1 + 2t = 4
TOL_AIM = 1e-4      # aim_setC README "Tolerances": logits and tokenizer tensors about 1e-4 absolute, ids exact


@dataclass
class Row:
    """One compared tensor: max abs error (or mismatch count for indices) against its tolerance."""

    name: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def __post_init__(self):
        self.error = float(self.error)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    if not path.is_file():
        raise FileNotFoundError(f"golden file missing: {path}")
    # parameters are stored in the smallest exact dtype (float8 / float16): compute in float32
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def _maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()


def _tokenizer(folder: Path, config: dict):
    from varbench.tokenizers import load_official_vqvae, vqvae_from_official_args
    vae = vqvae_from_official_args(config["tokenizer"]["args"])
    load_official_vqvae(vae, _load(folder / "tokenizer_state_dict.safetensors"))
    return vae.eval()


def _golden_ids(io: dict, num_scales: int) -> list[torch.Tensor]:
    return [io[f"idx_Bl.{k}"] for k in range(num_scales)]


@torch.no_grad()
def check_tokenizer(folder: Path, config: dict) -> list[Row]:
    vae = _tokenizer(folder, config)
    io = _load(folder / "tokenizer_io.safetensors")
    images = io["images"]
    f = vae.encode_latent(images)
    ids = vae.latent_to_ids(f)
    gold_ids = _golden_ids(io, len(ids))
    rows = [Row("tokenizer.f_BChw", _maxabs(f, io["f_BChw"]), TOL_LATENT)]
    rows += [Row(f"tokenizer.idx_Bl.{k} (mismatches)", (a != b).sum().item(), 0)
             for k, (a, b) in enumerate(zip(ids, gold_ids))]
    fhats = torch.stack(vae.latent_to_fhats(f))
    rows.append(Row("tokenizer.fhat_cumulative", _maxabs(fhats, io["fhat_cumulative"]), TOL_FHAT))
    rows.append(Row("tokenizer.fhat_from_ids",
                    _maxabs(torch.stack(vae.ids_to_fhats(gold_ids)), io["fhat_cumulative"]), TOL_FHAT))
    rows.append(Row("tokenizer.x_BLCv_wo_first_l",
                    _maxabs(vae.ids_to_var_input(gold_ids), io["x_BLCv_wo_first_l"]), TOL_FHAT))
    rows.append(Row("tokenizer.recon", _maxabs(vae.ids_to_img(gold_ids), io["recon"]), TOL_LATENT))
    return rows


def _transformer(folder: Path, config: dict, flavour: str):
    from varbench.backbones.convert import load_official, scale_ar_from_official_args, varbench_to_official
    tok_args = config["tokenizer"]["args"]
    section = config[flavour]
    model = scale_ar_from_official_args(flavour, section["args"], tok_args["vocab_size"], tok_args["z_channels"],
                                        mamba2=section.get("mamba2"))
    official = _load(folder / f"{flavour}_state_dict.safetensors")
    load_official(model, official)
    model.cond_drop_rate = section.get("golden_forward_cond_drop_rate", 0.0)
    back = varbench_to_official(model)
    round_trip = max(_maxabs(back[k].float(), official[k].float()) if k in back else float("inf") for k in official)
    extra = len(set(back) - set(official))
    return model, Row(f"{flavour}.state_dict round trip (max err; keys extra={extra})", round_trip + extra, 0)


@torch.no_grad()
def check_var(folder: Path, config: dict) -> list[Row]:
    model, round_trip = _transformer(folder, config, "var")
    io = _load(folder / "var_io.safetensors")
    logits = model.eval()(io["label_B"], io["x_BLCv_wo_first_l"])
    rows = [round_trip, Row("var.logits", _maxabs(logits, io["logits"]), TOL_LATENT)]
    cached = config["var"].get("cached_path")
    if cached is not None and "logits_cfg_guided_cached" in io:
        vae = _tokenizer(folder, config)
        tok_io = _load(folder / "tokenizer_io.safetensors")
        row = cached["image_index"]
        ids = [t[row:row + 1] for t in _golden_ids(tok_io, model.layout.num_scales)]
        out = model.generate(vae, io["infer_label_B"], cfg=cached["cfg"], forced_ids=ids, return_logits=True)
        rows.append(Row("var.logits_cfg_guided_cached",
                        _maxabs(torch.cat(out.logits, 1), io["logits_cfg_guided_cached"]), TOL_GUIDED))
    return rows


@torch.no_grad()
def check_mvar(folder: Path, config: dict) -> list[Row]:
    model, round_trip = _transformer(folder, config, "mvar")
    io = _load(folder / "mvar_io.safetensors")
    # the golden was made in train() mode (block-diagonal attention); varbench masks in every mode
    logits = model.eval()(io["label_B"], io["x_BLCv_wo_first_l"])
    rows = [round_trip, Row("mvar.logits", _maxabs(logits, io["logits"]), TOL_LATENT)]
    vae = _tokenizer(folder, config)
    tok_io = _load(folder / "tokenizer_io.safetensors")
    ids = [t[:1] for t in _golden_ids(tok_io, model.layout.num_scales)]
    # the state-carrying sampler, teacher-forced with image 0, must reproduce the training forward (cfg 0: raw logits)
    out = model.generate(vae, io["label_B"][:1], cfg=0.0, forced_ids=ids, return_logits=True)
    rows.append(Row("mvar.carried_state_logits_vs_golden_row0",
                    _maxabs(torch.cat(out.logits, 1), io["logits"][:1]), TOL_LATENT))
    return rows


@torch.no_grad()
def check_aim_tokenizer(folder: Path, config: dict) -> list[Row]:
    from varbench.tokenizers.vq_f16 import load_official_vq_f16, vq_f16_from_official_config
    vq = load_official_vq_f16(vq_f16_from_official_config(config["vq"]),
                              _load(folder / "tokenizer_state_dict.safetensors")).eval()
    io = _load(folder / "tokenizer_io.safetensors")
    pre_quant = vq.pre_quant(io["image"])
    return [Row("aim.tokenizer.pre_quant", _maxabs(pre_quant, io["pre_quant"]), TOL_AIM),
            Row("aim.tokenizer.ids (mismatches)", (vq.quantize.ids(pre_quant) != io["ids"]).sum().item(), 0),
            Row("aim.tokenizer.quant", _maxabs(vq.quant(io["ids"]), io["quant"]), TOL_AIM),
            Row("aim.tokenizer.recon", _maxabs(vq.decode(io["ids"]), io["recon"]), TOL_AIM)]


@torch.no_grad()
def check_aim(folder: Path, config: dict) -> list[Row]:
    """AiM's tokenizer, state-dict round trip, training forward, and the teacher-forced sampling path as the
    official `decode()` computes it (`sample_positions="official"`: token t - 1 fed at step t with position id t);
    a last row checks that varbench's default ("training" positions) reproduces the training forward."""
    from varbench.backbones import raster_convert as convert
    model = convert.raster_ar_from_official_config(config["mamba_config"], cond_drop_rate=0.0)
    official = _load(folder / "aim_state_dict.safetensors")
    convert.load_official_aim(model, official)
    model.eval()
    back = convert.varbench_to_official(model)
    round_trip = max(_maxabs(back[k], official[k]) if k in back else float("inf") for k in official)
    extra = len(set(back) - set(official))
    io = _load(folder / "aim_io.safetensors")
    label_B, code_BN = io["cond"][:, 0], io["code"]

    def steps(cfg: float, positions: str) -> torch.Tensor:
        return model.generate(label_B, cfg=cfg, forced_ids=code_BN, return_logits=True,
                              sample_positions=positions).logits

    return check_aim_tokenizer(folder, config) + [
        Row(f"aim.state_dict round trip (max err; keys extra={extra})", round_trip + extra, 0),
        Row("aim.logits_train", _maxabs(model(label_B, code_BN), io["logits_train"]), TOL_AIM),
        Row("aim.logits_steps_cond (official positions)", _maxabs(steps(1.0, "official"), io["logits_steps_cond"]),
            TOL_AIM),
        Row("aim.logits_steps_guided (official positions)",
            _maxabs(steps(config["cfg_scale"], "official"), io["logits_steps_guided"]), TOL_AIM),
        Row("aim.steps (training positions) vs logits_train", _maxabs(steps(1.0, "training"), io["logits_train"]),
            TOL_AIM)]


def check_golden(directory, parts=PARTS) -> list[Row]:
    """Run the named parts of the golden check; returns one Row per compared tensor."""
    folder = Path(directory)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: a golden folder holds config.json and safetensors files")
    config = json.loads(config_path.read_text())
    checks = {"tokenizer": check_tokenizer, "var": check_var, "mvar": check_mvar, "aim": check_aim}
    rows = []
    for part in parts:
        rows += checks[part](folder, config)
    return rows
