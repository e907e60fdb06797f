"""task=scaling: training throughput of one configuration on the GPUs of one host, DDP or FSDP2.

Run one process per GPU under torchrun (or Slurm tasks):
    torchrun --nproc_per_node N run.py task=scaling model=var_d30 task.parallel=fsdp
Protocol (stated in every record): per-GPU batch `task.batch_per_gpu` (global = N x it, weak scaling), bf16
autocast, fused AdamW, the trainer's own wrapping (varbench.training.loop.wrap_parallel), warm-up then CUDA-event
timing, median of repeats. Rank 0 records images/s (global), tokens/s, MFU against a bf16 matmul peak measured in
the same run on that GPU, and the peak memory of every rank. Scaling efficiency is computed by the report from
the records of 1 and N GPUs (varbench.analysis.study.parallel_scaling). Synthetic inputs: no data loading.
With device=cpu it runs on CPU processes (gloo): a check of the wiring, recorded as CPU numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from varbench.build import build_model, image_size, resolve_device
from varbench.eval.flops import model_flops, train_flops
from varbench.eval.timing import matmul_peak_tflops, speed_mode, train_step_cell
from varbench.training.loop import wrap_parallel
from varbench.utils.dist import init_distributed, shutdown
from varbench.utils.log import get_logger
from varbench.utils.records import record

log = get_logger(__name__)

PROTOCOL = "weak scaling: fixed per-GPU batch; bf16 autocast; fused AdamW; CUDA events; median of repeats"


def main(cfg: DictConfig) -> dict:
    """Time the training step of one configuration on this host's processes (DDP or FSDP2); rank 0 records it.
    Returns the summary."""
    t = cfg.task
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.device != "cpu":  # (session 21: mvar_d30 on a CPU host ran until killed for memory)
        raise SystemExit("task=scaling measures multi-GPU scaling and found no GPU; on a CPU it runs only when asked "
                         "by name, device=cpu, to check the wiring with a tiny model")
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    peak = matmul_peak_tflops(device=device, n=8192 if device.type == "cuda" else 512)
    torch.manual_seed(cfg.seed)
    with torch.device(device):  # parameters made on the GPU; .to() then moves the layout's CPU-built index tensors
        model = build_model(cfg, num_classes=1000).to(device)  # VAR's ImageNet shapes (as task=bench)
    flops = model_flops(model)["total"]
    net = wrap_parallel(model, t.parallel, info, device)
    timing = train_step_cell(model, t.batch_per_gpu, t.repeats, net=net)
    mems = [timing["peak_mem_bytes"]]  # bytes on a GPU, None on a CPU
    if info.world_size > 1:
        mems = [None] * info.world_size
        dist.all_gather_object(mems, timing["peak_mem_bytes"])
    ips = info.world_size * t.batch_per_gpu / (timing["median_ms"] * 1e-3)
    parallel = t.parallel if info.world_size > 1 else "none"
    summary = {"images_per_s": ips, "world_size": info.world_size, "parallel": parallel}
    if info.is_main:
        mfu = train_flops(flops) * ips / (info.world_size * peak * 1e12)
        record(f"{cfg.results_dir}/scaling.jsonl", "parallel_train_images_per_s", ips, "img/s", config=cfg,
               device=device, world_size=info.world_size, parallel=parallel, batch_per_gpu=t.batch_per_gpu,
               tokens_per_s=ips * model.layout.L, mfu=mfu, matmul_peak_tflops=peak, params=model.num_params(),
               fwd_flops_per_image=flops, peak_mem_bytes_per_gpu=mems, timing=timing, protocol=PROTOCOL,
               depth=len(model.blocks), resolution=image_size(cfg), **speed_mode(False, False, device))
        log.info("%d process(es) %s: %.1f img/s, MFU %.1f%%, peak memory per process %s", info.world_size, parallel,
                 ips, 100 * mfu, mems)
    shutdown()
    return summary
