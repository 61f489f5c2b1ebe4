"""Pretraining throughput (images/s) of a siamese method: `Learner.fit_one_cycle` with the method's callback versus a bare
PyTorch loop doing the same work (same DataLoader batches, same views, model, loss, teacher update, Adam and one-cycle
schedule).

Only the training phase is timed (fastai: a callback from before_train to after_train; bare loop: the epoch). The two
are interleaved in one process, `--reps` rounds, medians and bests reported (the CPU is shared with other jobs).

    python benchmarks/bench_throughput.py --method byol [--arch resnet18] [--reps 5] [--n-per-class 100] [--bs 64]
"""
import argparse, copy, os, platform, statistics, time, warnings
from functools import partial
import torch
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.optimizer import OptimWrapper
from self_supervised_fa.augment.views import small_image_augs
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.pixels import get_norm_stats
from self_supervised_fa.app.registry import METHODS
from self_supervised_fa.siamese.teacher import momentum_at
from bench_utils import write_text_atomic

warnings.filterwarnings('ignore', message='ViewAugment: 1-channel')


class TrainTimer(Callback):
    order = -100
    def before_train(self): self.t = time.perf_counter()
    def after_train(self): self.elapsed = time.perf_counter() - self.t


def make(method, arch):
    "The method's model and a callback configured as `methods.METHODS` records (digit views)"
    m = METHODS[method]
    model = m.get(m.factory)(arch, n_in=1, **m.model_kwargs)
    return model, m.get(m.callback)(aug=small_image_augs(28, crop_scale=(0.4, 1.), flip_p=0.), **m.callback_kwargs)


def fastai_epoch(dls, model, cb, lr):
    timer = TrainTimer()
    learn = Learner(dls, model, cbs=[cb, timer], opt_func=partial(OptimWrapper, opt=torch.optim.Adam))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)
    return timer.elapsed


def bare_epoch(dls, model, cb, lr):
    "The same work written out: undo the loader's Normalize, draw the views, forward, the method's loss, step, teacher update"
    (mean, std), augs = get_norm_stats(dls), cb.augs
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = len(dls.train)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=n)
    model.train(); t = time.perf_counter()
    for i, (xb, yb) in enumerate(dls.train):
        x01 = xb.as_subclass(torch.Tensor) * std + mean
        views = [(aug(x01, check=False) - mean) / std for aug in augs]
        loss = cb.compute_loss(model(*views), yb)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
        if model.teacher is not None: model.update_teacher(momentum_at(i / n, cb.momentum, cb.momentum_end))
        if getattr(cb, 'keys', None) is not None: model.queue.push(torch.nn.functional.normalize(cb.keys.float(), dim=1)); cb.keys = None
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--method', default='byol'); p.add_argument('--arch', default='resnet18')
    p.add_argument('--reps', type=int, default=5); p.add_argument('--n-per-class', type=int, default=100)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--out', default=None)
    a = p.parse_args()
    out = a.out or f'benchmarks/results/throughput_{a.method}.md'
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=a.n_per_class, valid_df=load_sample_df('test').iloc[:a.bs], bs=a.bs)
    n_img = len(dls.train) * a.bs
    model0, _ = make(a.method, a.arch)
    names = (f'fit_one_cycle + {type(make(a.method, a.arch)[1]).__name__}', 'bare PyTorch loop')
    res = {k: [] for k in names}

    def run(name):
        model, cb = copy.deepcopy(model0), make(a.method, a.arch)[1]
        if name == names[0]: return fastai_epoch(dls, model, cb, a.lr)
        learn = Learner(dls, model, cbs=cb)               # the callback's learner, for compute_loss (model, training)
        learn.training = True
        return bare_epoch(dls, model, cb, a.lr)
    run(names[1])                                                          # warm-up
    for r in range(a.reps):
        for name in names:
            res[name].append(n_img / run(name)); print(r, name, f'{res[name][-1]:.1f} img/s', flush=True)
    med, best = {k: statistics.median(v) for k, v in res.items()}, {k: max(v) for k, v in res.items()}
    md = [f"{a.method} training throughput, {a.arch} on 28-px grey digits ({n_img} images/epoch, batch {a.bs}, "
          f"{len(make(a.method, a.arch)[1].augs)} views), medians and bests of {a.reps} interleaved epochs (fastai first in each round).",
          f"Machine: 2-core CPU, 24 GiB, {a.threads} torch threads, shared with other jobs ({os.getloadavg()[0]:.1f} load average at the end), "
          f"Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, no GPU.",
          f"Command: `python benchmarks/bench_throughput.py --method {a.method} --arch {a.arch} --reps {a.reps} --n-per-class {a.n_per_class} --bs {a.bs} --threads {a.threads}`", '',
          '| loop | images/s (median) | images/s (best) | all runs | ratio of medians | ratio of bests |', '|---|---:|---:|---|---:|---:|']
    md += [f"| {k} | {med[k]:.1f} | {best[k]:.1f} | {', '.join(f'{v:.1f}' for v in res[k])} | "
           f"{med[k] / med[names[1]]:.3f} | {best[k] / best[names[1]]:.3f} |" for k in res]
    # each round runs the two loops back to back, so the load the other jobs put on the CPU is about the same for both:
    # the per-round ratio is the least noisy comparison on a shared machine
    paired = [f / b for f, b in zip(res[names[0]], res[names[1]])]
    pr = statistics.median(paired)
    md += ['', f"Per-round ratios (fastai / bare loop, same round): {', '.join(f'{v:.3f}' for v in paired)}; median **{pr:.3f}** "
           f"(target >= 0.95: {'met' if pr >= 0.95 else 'missed'})."]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_text_atomic(out, '\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__': main()
