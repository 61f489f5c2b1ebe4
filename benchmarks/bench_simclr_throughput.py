"""SimCLR pretraining throughput (images/s): `Learner.fit_one_cycle` with the `SimCLR` callback versus a bare PyTorch
loop doing the same work (same DataLoader batches, same views, model, NT-Xent loss, Adam and one-cycle schedule).

Only the training phase is timed (fastai: a callback from before_train to after_train; bare loop: the epoch).
The two are interleaved in one process, `--reps` rounds, medians reported (the CPU is shared).

    python benchmarks/bench_simclr_throughput.py [--arch resnet18] [--reps 5] [--n_per_class 100] [--bs 64]
"""
import os, time, copy, argparse, platform, statistics, warnings
import torch
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.optimizer import OptimWrapper
from functools import partial
from self_supervised_fa.simclr import SimCLR, NTXentLoss, create_simclr_model, small_image_augs
from self_supervised_fa.augment import normalize, denormalize
from self_supervised_fa.data import sample_dls, load_sample_df, get_norm_stats

warnings.filterwarnings('ignore', message='ViewAugment: 1-channel')


class TrainTimer(Callback):
    order = -100
    def before_train(self): self.t = time.perf_counter()
    def after_train(self): self.elapsed = time.perf_counter() - self.t


def fastai_epoch(dls, model, lr):
    timer = TrainTimer()
    learn = Learner(dls, model, cbs=[SimCLRCallback(small_image_augs(28)), timer], opt_func=partial(OptimWrapper, opt=torch.optim.Adam))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)
    return timer.elapsed


def bare_epoch(dls, model, lr):
    aug, loss_func, stats = small_image_augs(28), NTXentLoss(0.5), get_norm_stats(dls)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=len(dls.train))
    model.train(); t = time.perf_counter()
    for xb, yb in dls.train:
        x01 = denormalize(xb.as_subclass(torch.Tensor), stats)
        views = torch.cat([normalize(aug(x01), stats), normalize(aug(x01), stats)])
        loss = loss_func(*model(views).chunk(2))
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
    return time.perf_counter() - t


def main(arch='resnet18', reps=5, n_per_class=100, bs=64, lr=1e-3, out='benchmarks/results/simclr_throughput.md'):
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=n_per_class, valid_df=load_sample_df('test').iloc[:bs], bs=bs)
    n_img = len(dls.train) * bs
    model0 = create_simclr_model(arch, n_in=1)
    res = {'fit_one_cycle + SimCLR': [], 'bare PyTorch loop': []}
    bare_epoch(dls, copy.deepcopy(model0), lr)                               # warm-up
    for r in range(reps):
        for name, f in (('fit_one_cycle + SimCLR', fastai_epoch), ('bare PyTorch loop', bare_epoch)):
            res[name].append(n_img / f(dls, copy.deepcopy(model0), lr)); print(r, name, f'{res[name][-1]:.1f} img/s', flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    ratio = med['fit_one_cycle + SimCLR'] / med['bare PyTorch loop']
    md = [f"SimCLR training throughput, {arch} on 28-px grey digits ({n_img} images/epoch, batch {bs}, 2 views), medians and bests of {reps} interleaved epochs (fastai first in each round).",
          f"Machine: 2-core CPU, 24 GiB ({os.getloadavg()[0]:.1f} load average at the end), Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, no GPU.",
          "Command: `python benchmarks/bench_simclr_throughput.py`", '',
          '| loop | images/s (median) | images/s (best) | all runs | ratio of medians | ratio of bests |', '|---|---:|---:|---|---:|---:|']
    best = {k: max(v) for k, v in res.items()}
    md += [f"| {k} | {med[k]:.1f} | {best[k]:.1f} | {', '.join(f'{v:.1f}' for v in res[k])} | "
           f"{med[k] / med['bare PyTorch loop']:.3f} | {best[k] / best['bare PyTorch loop']:.3f} |" for k in res]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + '.tmp'; open(tmp, 'w').write('\n'.join(md) + '\n'); os.replace(tmp, out)
    print('\n'.join(md)); return ratio


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet18'); p.add_argument('--reps', type=int, default=5)
    p.add_argument('--n_per_class', type=int, default=100); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--out', default='benchmarks/results/simclr_throughput.md')
    a = p.parse_args(); main(a.arch, a.reps, a.n_per_class, a.bs, out=a.out)
