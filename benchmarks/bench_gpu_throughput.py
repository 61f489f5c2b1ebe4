"""SimCLR pretraining throughput on one device (images/s): `fit_one_cycle` with `SimCLRCallback`, float32 against fastai's
`to_fp16()` and `to_bf16()`, on colour crops of scikit-image's photos held in memory (so decoding files does not limit
the count). Written for the lent GPU (the distributed issue's 1-GPU number: resnet50 at 224 px, fp16); on a CPU it
runs at small settings so that the script itself is checked without a GPU.

Only training batches after `--warmup` are timed (a callback around them; `torch.cuda.synchronize` at both ends on a
GPU); two views per image, SimCLR's default views for the size (`ViewAugment` on the device), projector 2048 -> 128.

    python benchmarks/bench_gpu_throughput.py [--arch resnet50] [--size 224] [--bs 128] [--batches 30] [--modes fp32,fp16,bf16]
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import *   # to_fp16 / to_bf16
from fastai.callback.schedule import *
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory, TensorImage, default_device
from fastai.vision.core import imagenet_stats
from fastai.data.transforms import IntToFloatTensor, Normalize
from bench_utils import hardware, write_text_atomic
from self_supervised_fa.data.colour import COLOUR_PHOTOS
from self_supervised_fa.data.photos import photo_crops, load_photo
from self_supervised_fa.siamese.simclr import create_simclr_model, SimCLRCallback


def crops_dls(n, size, bs, device, seed=0):
    "Fastai DataLoaders of `n` colour crops (uint8 in memory; label: the photo), normalised with ImageNet statistics"
    rng, xs, ys = np.random.default_rng(seed), [], []
    photos = {name: load_photo(name) for name in COLOUR_PHOTOS}
    for i, arr in enumerate(photos.values()):
        for crop, _ in photo_crops(arr, -(-n // len(photos)), rng, size=size, scale=1):
            xs.append(TensorImage(torch.from_numpy(np.asarray(crop.convert('RGB'))).permute(2, 0, 1).contiguous())); ys.append(TensorCategory(i))
    items = list(zip(xs, ys))[:n]
    tfms = [IntToFloatTensor(), Normalize.from_stats(*imagenet_stats)]
    dl = lambda its, shuffle: TfmdDL(its, bs=bs, shuffle=shuffle, drop_last=shuffle, after_batch=tfms, device=device)
    return DataLoaders(dl(items, True), dl(items[:bs], False), device=device)   # validation (not timed): one batch


class BatchTimer(Callback):
    "Seconds spent in the training batches after the first `warmup`"
    order = 100
    def __init__(self, warmup): self.warmup, self.secs = warmup, 0.
    def _sync(self):
        if torch.device(self.dls.device).type == 'cuda': torch.cuda.synchronize()
    def before_batch(self):
        if self.training and self.iter >= self.warmup: self._sync(); self.t = time.perf_counter()
    def after_batch(self):
        if self.training and self.iter >= self.warmup: self._sync(); self.secs += time.perf_counter() - self.t


def run(mode, a, dls):
    torch.manual_seed(a.seed)
    model = create_simclr_model(a.arch, n_in=3, hidden_size=2048, projection_size=128)
    timer = BatchTimer(a.warmup)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[SimCLRCallback(), timer])   # the callback puts its loss in while fitting
    if mode == 'fp16': learn = learn.to_fp16()
    elif mode == 'bf16': learn = learn.to_bf16()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    images = (len(dls.train) - a.warmup) * a.bs
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and 'cuda' in str(dls.device) else float('nan')
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    return dict(mode=mode, images_per_s=images / timer.secs, secs=timer.secs, images=images, peak_gib=peak)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet50'); p.add_argument('--size', type=int, default=224)
    p.add_argument('--bs', type=int, default=128); p.add_argument('--batches', type=int, default=30, help='training batches per mode')
    p.add_argument('--warmup', type=int, default=5, help='first batches not timed'); p.add_argument('--modes', default='fp32,fp16,bf16')
    p.add_argument('--seed', type=int, default=0); p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', default=None, help='markdown report (default: benchmarks/results/gpu_throughput.md on a GPU, none on a CPU)')
    a = p.parse_args()
    if a.batches <= a.warmup: raise SystemExit(f'--batches ({a.batches}) must exceed --warmup ({a.warmup}): nothing would be timed')
    bad = set(a.modes.split(',')) - {'fp32', 'fp16', 'bf16'}
    if bad: raise SystemExit(f'unknown --modes {sorted(bad)}: choose from fp32, fp16, bf16')
    if a.threads: torch.set_num_threads(a.threads)
    device = default_device()
    dls = crops_dls(a.bs * a.batches, a.size, a.bs, device, a.seed)
    rows = [run(m, a, dls) for m in a.modes.split(',')]
    base = rows[0]['images_per_s']
    lines = [f"| {r['mode']} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f} | {r['peak_gib']:.1f} |" for r in rows]
    gpu = torch.cuda.get_device_name(0) if device.type == 'cuda' else 'no GPU'
    text = (f"## SimCLR throughput on one device ({a.arch}, {a.size} px, batch {a.bs})\n\n"
            f"Machine: {hardware(torch.get_num_threads())}; device {device} ({gpu}).\n\n"
            f"Command: `python benchmarks/bench_gpu_throughput.py --arch {a.arch} --size {a.size} --bs {a.bs} --batches {a.batches} "
            f"--warmup {a.warmup} --modes {a.modes}`\n\n{a.batches - a.warmup} timed training batches per mode (2 views per image, "
            f"`fit_one_cycle` with `SimCLRCallback`), colour crops of scikit-image's photos in memory.\n\n"
            f"| precision | images/s | vs {rows[0]['mode']} | peak GPU memory (GiB) |\n|---|---:|---:|---:|\n" + '\n'.join(lines) + '\n')
    out = a.out or ('benchmarks/results/gpu_throughput.md' if device.type == 'cuda' else None)
    if out: write_text_atomic(out, text)
    print(text)


if __name__ == '__main__': main()
