import sys, time, tempfile, json, torch
from torch.utils.data import TensorDataset
from varbench.data.embedded import EmbeddedShapes
from varbench.tokenizers import MultiScaleVQVAE
from varbench.tokenizers.trainer import train_tokenizer
dev = "cuda"
torch.backends.cudnn.benchmark = True
def render(split):
    ds = EmbeddedShapes(split, 64)
    xs = [ds[i] for i in range(len(ds))]
    return TensorDataset(torch.stack([x for x, _ in xs]), torch.tensor([y for _, y in xs]))
t = time.time(); train, val = render("train"), render("val"); print("render", time.time() - t, len(train), len(val), flush=True)
TINY = dict(vocab_size=256, z_channels=16, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, patch_nums=(1, 2, 3, 4))
base = dict(steps=500, batch_size=16, lr=1e-3, warmup_steps=20, dead_code_every=25, dead_code_threshold=0.1)
cands = {"A": dict(data_init_codebook=False), "B": dict(betas=(0.9, 0.99), data_init_codebook=False), "E": dict(betas=(0.9, 0.99)), "F": dict()}
grid = [dict(name=n, seed=sd, **c) for n, c in cands.items() for sd in (0, 1, 2)]
for g in grid:
    o = {**base, **g}; o.pop('name')
    torch.manual_seed(o['seed'])
    vae = MultiScaleVQVAE(**TINY, test_mode=False)
    t = time.time()
    s = train_tokenizer(vae, train, device=dev, out_dir=tempfile.mkdtemp(), val_set=val, progress=False, tensorboard=False, log_every=100, **o)
    print(json.dumps(dict(g=g, time=round(time.time() - t, 1), psnr=round(s["psnr"], 2), ssim=round(s["ssim"], 4),
          usage=[round(u, 3) for u in s["usage"]], usage_total=round(s["usage_total"], 3), l2=round(s["losses"]["l2"], 4), vq=round(s["losses"]["vq"], 4))), flush=True)
