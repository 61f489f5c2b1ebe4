"""A SimCLR epoch through `Learner.fit_one_cycle`, ours against self_supervised 1.0.4's, with the same work: resnet18 body
(3 channels, random init), a 2-layer projector 512 -> 128 with BatchNorm, batch 128, 2 views of every image with the same ops and
probabilities (crop 0.2-1, flip 0.5, colour jitter strength 0.6 @0.3, grayscale 0.3, blur 0.3; no normalisation),
temperature 0.07, fastai's Adam, on the sample's digits as RGB (`--n-per-class` per class, 28 px). Three learners, one
epoch each per round, interleaved: ours (the batched view ops), ours with `ViewAugment(backend='kornia')` (the
pipeline before issue 15), self_supervised's `SimCLR` callback. The training phase of the epoch is timed
(before_train to after_train); the views' share is their time on the same batches (timed apart, same round) over it.

    python benchmarks/bench_simclr_epoch.py [--rounds 3] [--n-per-class 100] [--threads 1]

self_supervised 1.0.4 comes from `pip install self-supervised==1.0.4 --no-deps` (bench only).
"""
import argparse, statistics, sys, time, warnings
from pathlib import Path
import torch
from fastai.learner import Learner
from fastai.callback.core import Callback
from bench_utils import machine, write_text_atomic, md_table
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.siamese.simclr import SimCLRCallback, create_simclr_model
from self_supervised_fa.augment.views import ViewAugment

KW = dict(crop_scale=(0.2, 1.), jitter_strength=0.6, jitter_p=0.3, grayscale_p=0.3, blur_p=0.3)
SIZE = 28


class TrainTimer(Callback):
    "Wall seconds of the training phase of each epoch"
    order = 100
    def before_train(self): self.t = time.perf_counter()
    def after_train(self): self.secs = time.perf_counter() - self.t


def ours(dls, backend):
    augs = [ViewAugment(SIZE, backend=backend, **KW) for _ in range(2)]
    model = create_simclr_model('resnet18', hidden_size=512, projection_size=128, n_in=3)
    return Learner(dls, model, cbs=[SimCLRCallback(augs, temperature=0.07), TrainTimer()]), augs


def theirs(dls):
    from self_supervised.augmentations import get_batch_augs
    from self_supervised.layers import create_timm_encoder
    from self_supervised.vision.simclr import SimCLR, create_simclr_model as their_model
    augs = [get_batch_augs(SIZE, rotate=False, resize_scale=KW['crop_scale'], jitter_s=.6, jitter_p=.3, bw_p=.3, blur_p=.3,
                           stats=None, cuda=False) for _ in range(2)]
    model = their_model(create_timm_encoder('resnet18', pretrained=False, n_in=3, pool_type='avg'), hidden_size=512, projection_size=128, bn=True)
    return Learner(dls, model, cbs=[SimCLR(augs, temp=0.07), TrainTimer()]), augs


def views_secs(augs, x, n_batches):
    t = time.perf_counter()
    for _ in range(n_batches): [a(x) for a in augs]
    return time.perf_counter() - t


def main(a):
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    warnings.filterwarnings('ignore')
    import os; load0 = os.getloadavg()[0]
    dls = sample_dls(n_per_class=a.n_per_class, n_in=3, bs=a.bs, normalize=False, valid_df=load_sample_df('test').iloc[:a.bs],
                     drop_last=True)
    x = dls.one_batch()[0].as_subclass(torch.Tensor)
    learners = {'ours': ours(dls, 'fast'), 'ours, kornia backend (before)': ours(dls, 'kornia'), 'self_supervised 1.0.4': theirs(dls)}
    n_batches = len(dls.train)
    res = {k: dict(epoch=[], views=[]) for k in learners}
    for r in range(a.rounds + 1):                   # round 0 warms up
        for k, (learn, augs) in learners.items():
            with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
            v, e = views_secs(augs, x, n_batches), learn.train_timer.secs
            if r: res[k]['epoch'].append(e); res[k]['views'].append(v)
            print(r, k, f"{e:.2f} s, views {v:.2f} s", flush=True)
    ref = statistics.median(res['self_supervised 1.0.4']['epoch'])
    rows = []
    for k, v in res.items():
        e = statistics.median(v['epoch']); share = statistics.median([vv / ee for vv, ee in zip(v['views'], v['epoch'])])
        ratio = statistics.median([ee / tt for ee, tt in zip(v['epoch'], res['self_supervised 1.0.4']['epoch'])])
        rows.append(dict(pipeline=k, epoch=f'{e:.2f}', ratio=f'{ratio:.2f}' + ('' if k != 'ours' else (' (met)' if ratio <= 0.95 else ' (**missed**)')),
                         views=f"{statistics.median(v['views']):.2f}", share=f'{100 * share:.0f} %'))
    cmd = f"python benchmarks/bench_simclr_epoch.py --rounds {a.rounds} --n-per-class {a.n_per_class} --bs {a.bs} --threads {a.threads}"
    txt = (f"## A SimCLR epoch, ours against self_supervised 1.0.4\n\nMachine: {machine(load0, a.threads)}; {a.rounds} interleaved "
           f"rounds after a warm-up, medians (the ratio is the median of the per-round ratios).\n\nCommand: `{cmd}`\n\n"
           f"{n_batches} training batches of {a.bs} digits (RGB, {SIZE} px) per epoch, resnet18, projector 512 -> 128 with BatchNorm, 2 views, "
           "crop 0.2-1, flip 0.5, jitter 0.6 @0.3, grayscale 0.3, blur 0.3, temperature 0.07, fastai's Adam, `fit_one_cycle(1, 1e-3)`. "
           "Target (issue 15): ours <= 0.95x self_supervised's epoch time.\n\n"
           + md_table(rows, ['pipeline', 'epoch', 'ratio', 'views', 'share'],
                      ['pipeline', 'training phase of an epoch (s)', 'x self_supervised (per round)', 'views of the epoch\'s batches (s)',
                       'views share of the epoch']) + '\n')
    write_text_atomic(a.out, txt); print(txt)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--n-per-class', type=int, default=100)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='benchmarks/results/simclr_epoch.md')
    main(p.parse_args())
