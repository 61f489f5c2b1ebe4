"""An epoch of every method in bf16 autocast + channels-last against float32, the same work side by side, and what the
library's default `precision='auto'` picks on this machine: each method's registry recipe (`method_learner`) on the
sample, one epoch of `fit_one_cycle` per learner per round, the two learners interleaved; the training phase of the epoch
is timed (wall clock; both learners see the same load).

    python benchmarks/bench_precision.py [--arch resnet10t] [--rounds 3] [--n-per-class 20] [--threads 2] [--methods simclr,...]
    python benchmarks/bench_precision.py --arch resnet18 --methods simclr --sizes 32,96 --out benchmarks/results/precision_simclr_resnet18.md

Siamese methods, RotNet, inpainting and super-resolution run on grey digits at `--sizes` (default 32 px); jigsaw and
context on digits at 64 px (their patch grids need it); colorization on the colour photo crops at 32 px.
"""
import argparse, os, statistics, time, warnings
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import *   # fit_one_cycle
from bench_utils import machine, write_text_atomic, md_table
from self_supervised_fa.app.registry import METHODS, method_learner
from self_supervised_fa.core.precision import resolve_precision
from self_supervised_fa.data.sample import sample_dls
from self_supervised_fa.data.colour import colour_sample_dls


class TrainTimer(Callback):
    "Wall seconds of the training phase of each epoch"
    order = 100
    def before_train(self): self.t = time.perf_counter()
    def after_train(self): self.secs = time.perf_counter() - self.t


def data(name, size, n_per_class, bs):
    if name.startswith('colorize'): return colour_sample_dls(bs=bs, size=size), size
    if name in ('jigsaw', 'context'): size = max(size, 64)
    return sample_dls(n_per_class=n_per_class, n_valid=2, size=size, bs=bs, drop_last=True), size


def main(a):
    torch.set_num_threads(a.threads); warnings.filterwarnings('ignore')
    load0 = os.getloadavg()[0]
    rows = []
    for size in a.sizes:
        for name in a.methods:
            dls, s = data(name, size, a.n_per_class, a.bs)
            learners = {p: method_learner(name, dls, a.arch, precision=p, cbs=TrainTimer()) for p in ('fp32', 'bf16')}
            auto = resolve_precision('auto')
            secs = {p: [] for p in learners}
            for r in range(a.rounds + 1):             # round 0 warms up
                for p, learn in learners.items():
                    torch.manual_seed(r)
                    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
                    if r: secs[p].append(learn.train_timer.secs)
            ratio = statistics.median([x / y for x, y in zip(secs['bf16'], secs['fp32'])])
            auto_ratio = ratio if auto == 'bf16' else 1.0
            target = 0.70 if name == 'simclr' and a.arch == 'resnet18' else 0.80
            row = dict(method=name, size=s, fp32=f"{statistics.median(secs['fp32']):.2f}", bf16=f"{statistics.median(secs['bf16']):.2f}",
                       ratio=f"{ratio:.2f}", auto=f"{auto}: {auto_ratio:.2f} ({'met' if auto_ratio <= target else '**missed**'}, target {target:.2f})")
            rows.append(row); print(row, flush=True)
    cmd = (f"python benchmarks/bench_precision.py --arch {a.arch} --rounds {a.rounds} --n-per-class {a.n_per_class} --bs {a.bs} "
           f"--threads {a.threads} --sizes {','.join(map(str, a.sizes))} --methods {','.join(a.methods)}")
    txt = (f"## An epoch in bf16 + channels-last against float32, and what `precision='auto'` picks\n\nMachine: {machine(load0, a.threads)}; {a.rounds} interleaved rounds "
           f"after a warm-up, medians (the ratio is the median of the per-round ratios).\n\nCommand: `{cmd}`\n\n"
           f"Each method's registry recipe on {a.arch} from random weights, batch {a.bs}, the training phase of one epoch of "
           f"`fit_one_cycle(1, 1e-3)` ({a.n_per_class} digits per class; colorization: the 150 training crops of the colour sample). "
           "Targets (issue 28): SimCLR on resnet18 <= 0.70x float32, every method <= 0.80x.\n\n"
           + f"On this CPU `precision='auto'` means {auto} ({'bf16 is known to be faster here' if auto == 'bf16' else 'no evidence that bf16 is faster: Intel AVX512-BF16 without AMX, or no bf16'}).\n\n"
           + md_table(rows, ['method', 'size', 'fp32', 'bf16', 'ratio', 'auto'],
                      ['method', 'px', 'float32 epoch (s)', 'bf16 + channels-last epoch (s)', 'bf16 / float32', "'auto': its choice, / float32"]) + '\n')
    write_text_atomic(a.out, txt); print(txt)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--n-per-class', type=int, default=20)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--sizes', type=lambda s: [int(v) for v in s.split(',')], default=[32])
    p.add_argument('--methods', type=lambda s: s.split(','), default=list(METHODS))
    p.add_argument('--out', default='benchmarks/results/precision_epoch.md')
    main(p.parse_args())
