"""DINO speed with 2 global + 6 local crops, two comparisons in one process, interleaved, `--reps` rounds, medians:

1. training throughput (images/s) of `Learner.fit_one_cycle` with `DINOCallback` against a bare PyTorch loop doing the
   same work: the same DataLoader batches, the same 8 `ViewAugment`s, model, `DINOLoss` with the centre and the teacher's
   temperature schedule, torch's Adam on a one-cycle schedule, the EMA teacher update (only the training phase is
   timed; fastai: from before_train to after_train). fastai is run with torch's Adam (`OptimWrapper`, the same work)
   and with fastai's own Adam (its default);
2. the training step on fixed crops: our multi-crop forward (`SiameseModel`: the encoder once per size group, the
   teacher once on the global crops) with `DINOLoss`, against lightly's DINO example loop on the same model and crops
   (one forward per crop for the student and per global crop for the teacher, lightly's `DINOLoss` and
   `update_momentum`), each followed by backward, an Adam step and the teacher update.

    python benchmarks/bench_dino_speed.py [--arch resnet18] [--reps 5] [--bs 64] [--n-per-class 50] [--threads 2]
"""
import argparse, copy, os, statistics, time, warnings
from functools import partial
import torch
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.optimizer import OptimWrapper
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.pixels import get_norm_stats
from self_supervised_fa.core.pixels import normalize, denormalize
from self_supervised_fa.augment.multicrop import small_dino_augs
from self_supervised_fa.siamese.teacher import momentum_at
from self_supervised_fa.siamese.dino import create_dino_model, DINOCallback, DINOLoss
from bench_utils import machine, write_text_atomic

warnings.filterwarnings('ignore', message='ViewAugment: 1-channel')
HEAD = dict(out_dim=4096, hidden_size=2048, bottleneck_size=256)


def clock(): return time.perf_counter(), time.process_time()
def since(t0): "(wall, CPU) seconds since `t0 = clock()`"; return tuple(b - a for a, b in zip(t0, clock()))


class TrainTimer(Callback):
    order = -100
    def before_train(self): self.t = clock()
    def after_train(self): self.elapsed = since(self.t)


def make_cb(): return DINOCallback(small_dino_augs(28, flip_p=0.), freeze_last_layer=0)


def fastai_epoch(dls, model, lr, opt_func=None):
    timer = TrainTimer()
    learn = Learner(dls, model, cbs=[make_cb(), timer], **({'opt_func': opt_func} if opt_func else {}))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)
    return timer.elapsed


def bare_epoch(dls, model, lr):
    "The same work as `fastai_epoch` with torch's Adam, written as a plain loop"
    cb, stats = make_cb(), get_norm_stats(dls)
    augs, loss_func, n = cb.augs, cb.loss_func, len(dls.train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=n)
    model.train(); t = clock()
    for i, (xb, yb) in enumerate(dls.train):
        x01 = denormalize(xb.as_subclass(torch.Tensor), stats)
        views = [normalize(a(x01, check=False), stats) for a in augs]
        out = model(*views)
        loss = loss_func(out['proj'], out['target'], model.center, cb.teacher_temp_at(i / n))
        model.update_center(out['target'], cb.center_momentum)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
        model.update_teacher(momentum_at(i / n, cb.momentum, cb.momentum_end))   # fastai: pct_train before it advances
    return since(t)


def crops(dls, seed=0):
    cb, stats = make_cb(), get_norm_stats(dls)
    x01 = denormalize(dls.one_batch()[0].as_subclass(torch.Tensor), stats)
    torch.manual_seed(seed)
    return [normalize(a(x01, check=False), stats) for a in small_dino_augs(28, flip_p=0.)]


def ours_steps(model, views, steps, lr):
    loss_func, opt = DINOLoss(0.1), torch.optim.Adam(model.parameters(), lr=lr)
    t = clock()
    for _ in range(steps):
        out = model(*views)
        loss = loss_func(out['proj'], out['target'], model.center, 0.04)
        model.update_center(out['target'], 0.9)
        loss.backward(); opt.step(); opt.zero_grad()
        model.update_teacher(0.996)
    return since(t)


def lightly_steps(model, views, steps, lr):
    "lightly's examples/pytorch/dino.py loop: a forward per crop, lightly's DINOLoss and update_momentum"
    from lightly.loss import DINOLoss as LightlyDINOLoss
    from lightly.models.utils import update_momentum
    student = lambda v: model.projector(model.encoder.embed(v))
    teacher = lambda v: model.teacher.projector(model.teacher.encoder.embed(v))
    criterion, opt = LightlyDINOLoss(output_dim=HEAD['out_dim'], warmup_teacher_temp_epochs=5), torch.optim.Adam(model.parameters(), lr=lr)
    t = clock()
    for _ in range(steps):
        with torch.no_grad(): teacher_out = [teacher(v) for v in views[:2]]
        student_out = [student(v) for v in views]
        loss = criterion(teacher_out, student_out, epoch=0)
        loss.backward(); opt.step(); opt.zero_grad()
        update_momentum(model.encoder, model.teacher.encoder, m=0.996)
        update_momentum(model.projector, model.teacher.projector, m=0.996)
    return since(t)


def table(res, base, j):
    "Markdown table of the throughputs `res[loop][round][j]` (j: 0 wall, 1 CPU) and each loop's ratio to `base`; the ratios"
    v = {k: [r[j] for r in rs] for k, rs in res.items()}
    med = {k: statistics.median(x) for k, x in v.items()}
    per_round = {k: statistics.median(a / b for a, b in zip(x, v[base])) for k, x in v.items()}
    rows = [f"| {k} | {med[k]:.1f} | {max(x):.1f} | {', '.join(f'{y:.1f}' for y in x)} | {med[k] / med[base]:.3f} | {per_round[k]:.3f} |"
            for k, x in v.items()]
    head = ['| loop | median | best | all rounds | ratio of medians | median of per-round ratios |', '|---|---:|---:|---|---:|---:|']
    return '\n'.join(head + rows), {k: med[k] / med[base] for k in v}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--n-per-class', type=int, default=50)
    p.add_argument('--steps', type=int, default=5, help='steps per round of the fixed-crops comparison')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='benchmarks/results/dino_speed.md')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=a.n_per_class, valid_df=load_sample_df('test').iloc[:a.bs], bs=a.bs)
    n_img = len(dls.train) * a.bs
    model0 = create_dino_model(a.arch, n_in=1, **HEAD)
    loops = {'fit_one_cycle + DINOCallback, torch Adam': partial(fastai_epoch, opt_func=partial(OptimWrapper, opt=torch.optim.Adam)),
             'fit_one_cycle + DINOCallback, fastai Adam (default)': fastai_epoch, 'bare PyTorch loop, torch Adam': bare_epoch}
    res = {k: [] for k in loops}
    bare_epoch(dls, copy.deepcopy(model0), a.lr)                                   # warm-up
    for r in range(a.reps):
        for name, f in loops.items():
            res[name].append([n_img / t for t in f(dls, copy.deepcopy(model0), a.lr)]); print(r, name, res[name][-1], 'img/s (wall, CPU)', flush=True)
    views = crops(dls)
    n_step = a.steps * a.bs
    steps = {'ours: one forward per size group': ours_steps, "lightly's DINO example loop: one forward per crop": lightly_steps}
    res2 = {k: [] for k in steps}
    ours_steps(copy.deepcopy(model0), views, 1, a.lr)
    for r in range(a.reps):
        for name, f in steps.items():
            res2[name].append([n_step / t for t in f(copy.deepcopy(model0), views, a.steps, a.lr)]); print(r, name, res2[name][-1], 'img/s (wall, CPU)', flush=True)
    (t1w, r1w), (t1c, r1c) = [table(res, 'bare PyTorch loop, torch Adam', j) for j in (0, 1)]
    (t2w, r2w), (t2c, r2c) = [table(res2, "lightly's DINO example loop: one forward per crop", j) for j in (0, 1)]
    r1 = {k: r['fit_one_cycle + DINOCallback, torch Adam'] for k, r in (('wall', r1w), ('CPU', r1c))}
    r2 = {k: r['ours: one forward per size group'] for k, r in (('wall', r2w), ('CPU', r2c))}
    verdict = lambda r, goal: f"wall {r['wall']:.3f}x ({'met' if r['wall'] >= goal else 'missed'}), CPU {r['CPU']:.3f}x ({'met' if r['CPU'] >= goal else 'missed'})"
    cmd = 'python benchmarks/bench_dino_speed.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if k != 'out')
    text = (f"## DINO speed, 2 global (28 px) + 6 local (12 px) crops\n\n{a.arch} with a DINO head ({HEAD}) on grey digits, "
            f"batch {a.bs}, {a.reps} interleaved rounds, medians. Throughput per wall-clock second and per CPU second of this process "
            f"(one torch thread, no DataLoader workers: its CPU time is the work done, whatever the other jobs on the machine do; the "
            f"wall time depends on them).\n\nMachine: {machine(load0, a.threads)}.\n\nCommand: `{cmd}`\n\n"
            f"### 1. Training throughput, {n_img} images per epoch\n\nImages per wall-clock second:\n\n{t1w}\n\n"
            f"Images per CPU second:\n\n{t1c}\n\n"
            f"### 2. Training steps on fixed crops, {a.steps} steps of {a.bs} images per round\n\nImages per wall-clock second:\n\n"
            f"{t2w}\n\nImages per CPU second:\n\n{t2c}\n\n"
            f"### Against the targets (issue 11; ratios of medians)\n\n| target | measured |\n|---|---|\n"
            f"| fit_one_cycle (torch Adam) >= 0.95x a bare PyTorch loop doing the same work | {verdict(r1, 0.95)} |\n"
            f"| multi-crop forward no slower than lightly's DINO example loop | {verdict(r2, 1.)} |\n")
    write_text_atomic(a.out, text)
    print(text)


if __name__ == '__main__': main()
