"""task=edit: zero-shot in-painting, out-painting and class-conditional editing of one image with a trained model
(VAR's `demo_zero_shot_edit.ipynb`; the blending rule is in varbench/backbones/editing.py).

`python run.py task=edit task.image=PATH task.box=[y0,x0,y1,x1] task.mode=inpaint|outpaint [task.label=N]` writes
`edit_<key>.png` in the run folder, named by what drew it (`keyed_file`): one row, the input, its reconstruction
by the tokenizer, the input with the generated region greyed out, then `task.samples` edits drawn from `seed`; and
one record in results/edit.jsonl naming the inputs (image path and sha256, box, mode, label, model checkpoint path
and sha256, tokenizer checkpoint sha256).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from varbench.backbones.editing import MODES, Edit, box_keep_mask, check_box
from varbench.build import resolve_device
from varbench.eval.samplers import make_sampler
from varbench.eval.sampling import keyed_file
from varbench.runs import load_for_task
from varbench.training.loop import autocast
from varbench.utils.hashing import file_sha256
from varbench.utils.images import save_grid
from varbench.utils.records import record


def load_image(path, size: int) -> torch.Tensor:
    """The image to edit as (1, 3, size, size) in [-1, 1]: any PIL mode to RGB, the shorter side resized to `size`
    (LANCZOS), centre crop. The box fractions refer to this square."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    from varbench.data.transforms import to_pm1, to_rgb
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task.image = {str(path)!r}: no such file")
    with Image.open(path) as img:
        rgb = to_rgb(img)
    square = T.Compose([T.Resize(size, interpolation=InterpolationMode.LANCZOS), T.CenterCrop(size), T.ToTensor()])
    return to_pm1(square(rgb)).unsqueeze(0)


def edit_label(label, num_classes: int) -> int:
    """The class of the edit: `label`, or the null class `num_classes` (unconditional in-painting) when None."""
    if label is None:
        return num_classes
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= num_classes:
        raise ValueError(f"task.label = {label!r} must be an integer class in [0, {num_classes}] "
                         f"({num_classes} = the null class: unconditional in-painting), or null")
    return label


def preview(image_13HW: torch.Tensor, keep_HH: torch.Tensor) -> torch.Tensor:
    """The input with the region to generate greyed out, in [0, 1]."""
    keep_11HW = F.interpolate(keep_HH[None, None].float(), size=image_13HW.shape[-2:], mode="nearest")
    return image_13HW.add(1).mul(0.5) * keep_11HW + 0.5 * (1 - keep_11HW)


def check_task(t: DictConfig) -> None:
    """Refuse a bad edit request before any weights are loaded."""
    if not t.get("image"):
        raise ValueError("task=edit needs task.image=PATH (the image to edit)")
    if t.get("box") is None:
        raise ValueError("task=edit needs task.box=[y0,x0,y1,x1] (fractions of the side in [0, 1])")
    check_box(t.box, name="task.box")
    if t.mode not in MODES:
        raise ValueError(f"task.mode = {t.mode!r} must be one of {MODES}")
    if isinstance(t.samples, bool) or not isinstance(t.samples, int) or t.samples < 1:
        raise ValueError(f"task.samples = {t.samples!r} must be an integer >= 1")


def image_edit(t: DictConfig, tokenizer, device: torch.device) -> tuple[torch.Tensor, Edit]:
    """The image to edit (1, 3, H, W) in [-1, 1] and the `Edit` that keeps its tokens outside `task.box`'s edit."""
    keep_HH = box_keep_mask(t.box, tokenizer.patch_nums[-1], t.mode, name="task.box").to(device)
    image_13HW = load_image(t.image, tokenizer.image_size).to(device)
    return image_13HW, Edit(tokenizer.img_to_ids(image_13HW), keep_HH)


def main(cfg: DictConfig) -> dict:
    """Edit `task.image` inside or outside `task.box` with the run's model; write edit_<key>.png and its record;
    return its path and time."""
    t = cfg.task
    check_task(t)
    device = resolve_device(cfg.device)
    run = load_for_task(cfg, device)  # model and tokenizer rebuilt from the run's spec, the command line checked
    tokenizer, model = run.tokenizer, run.model
    label = edit_label(t.get("label"), model.num_classes)
    run.hold_block_weights(t.block_weights, t.precision)
    image_13HW, edit = image_edit(t, tokenizer, device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    start = time.perf_counter()
    with autocast(device, t.precision):
        sampler = make_sampler(t.sampler, model, tokenizer, cfg=t.cfg, top_k=t.top_k, top_p=t.top_p,
                               more_smooth=t.more_smooth)
        out = sampler(torch.full((t.samples,), label, device=device), generator=generator, edit=edit)
    seconds = time.perf_counter() - start
    recon_13HW = tokenizer.ids_to_img(edit.ids).add(1).mul(0.5)
    row = torch.cat([image_13HW.add(1).mul(0.5), recon_13HW, preview(image_13HW, edit.keep_HH), out.images.float()])
    image_sha256 = file_sha256(t.image)
    drawn_by = run.weights_key() | {
        "image_sha256": image_sha256, "box": list(t.box), "mode": t.mode, "label": label, "samples": t.samples,
        "seed": cfg.seed, "sampler": t.sampler, "cfg": t.cfg, "top_k": t.top_k, "top_p": t.top_p,
        "more_smooth": t.more_smooth, "precision": t.precision, "device": str(device)}
    path = save_grid(row, 1, keyed_file(cfg.run_dir, "edit", drawn_by))
    record(Path(cfg.results_dir) / "edit.jsonl", "edit_grid", str(path), "png", config=run.config, device=device,
           seconds=seconds, image=str(Path(t.image).resolve()), image_sha256=image_sha256, box=list(t.box),
           mode=t.mode, label=label, null_class=model.num_classes, samples=t.samples, **run.identity(),
           grid_columns=["input", "reconstruction", "kept region"] + [f"edit {i}" for i in range(t.samples)])
    return {"grid": str(path), "seconds": seconds, "samples": t.samples}
