"""Pretext tasks after a short CPU pretraining run: pretext metric before/after and kNN transfer vs random weights.

For each task (rotnet, colorize, jigsaw, context, inpaint, superres): `Learner.fit_one_cycle` on the MNIST sample
(colour crops of scikit-image's photos for colorization: grey digits have no colour to learn), the pretext metric on a
held-out validation set before and after training (accuracy for the classification tasks, the task loss for the
reconstruction tasks, next to a trivial baseline), the wall time, and the cosine-kNN top-1 of the pretrained encoder
on the sample's 1,000 test digits (bank: `--knn-bank` training digits per class, 28 px, 1 channel) against the same
encoder with its weights before training (random init, same seed). Writes a markdown table atomically to `--out`.

    nice -n 5 python benchmarks/bench_pretext.py [--tasks rotnet,colorize,...] [--arch resnet18] [--threads 1]
"""
import argparse, copy, os, platform, sys, time
from pathlib import Path
import torch
from torch import nn
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.callback.schedule import *   # fit_one_cycle
from fastai.torch_core import set_seed
from self_supervised_fa.data import sample_dls, load_sample_df, subsample_per_class
from self_supervised_fa.encoders import create_timm_body
from self_supervised_fa.evaluate import get_embeddings, knn_accuracy
from self_supervised_fa.pretext import MaskedMSELoss
from self_supervised_fa.rotnet import RotNetCallback, create_rotnet_model
from self_supervised_fa.colorize import ColorizeCallback, create_colorize_model, colour_sample_dls
from self_supervised_fa.jigsaw import JigsawCallback, create_jigsaw_model
from self_supervised_fa.context import ContextCallback, create_context_model
from self_supervised_fa.inpaint import InpaintCallback, create_inpaint_model
from self_supervised_fa.superres import SuperResCallback, create_superres_model


class Fn(nn.Module):
    "A parameter-free 'model' for trivial baselines: `fn(inputs)`"
    def __init__(self, fn):
        super().__init__(); self.fn = fn
        self.unused = nn.Parameter(torch.zeros(0))   # fastai reads the device from the first parameter
    def forward(self, x): return self.fn(x)


def digits(a, size=None):
    "The sample's digits: `--n-per-class` training images per class, the first `--n-valid` test images held out"
    return sample_dls(n_per_class=a.n_per_class, valid_df=load_sample_df('test').iloc[:a.n_valid], size=size, bs=a.bs,
                      seed=a.seed)


# each task: (dls, model, callback, loss, metrics, baseline model or None, description of data/size, chance)
def task_rotnet(a):
    dls = digits(a)
    return dict(dls=dls, model=create_rotnet_model(a.arch, n_in=1), cb=RotNetCallback(all_rotations=True),
                loss=CrossEntropyLossFlat(), metrics=accuracy, chance=0.25, size=28,
                data='MNIST sample digits, all 4 rotations of each image (valid: all 4 too)', lr=a.lr)

def task_colorize(a):
    dls = colour_sample_dls(size=32, n_per_photo=a.colour_per_photo, bs=a.bs)
    cb = ColorizeCallback('rgb', grey_channels=1)
    base_cb = ColorizeCallback('rgb', grey_channels=1)
    base = lambda: (Fn(lambda inp: base_cb.grey(inp).expand(-1, 3, -1, -1)), base_cb)   # predict grey: R=G=B=luma
    return dict(dls=dls, model=create_colorize_model(a.arch, n_in=1, img_size=32), cb=cb, loss=MaskedMSELoss(),
                metrics=None, baseline=base, baseline_name='grey (R=G=B=luma)', size=32, lr=a.lr,
                data=f'colour crops of 5 scikit-image photos (`colour_sample_dls`, {a.colour_per_photo}/photo, 1/4 held out), '
                     'RGB MSE in [0,1], 1-channel luminance input '
                     '(`grey_channels=1`); its kNN column is a transfer from photos to digits')

def task_jigsaw(a):
    dls = digits(a, size=64)
    return dict(dls=dls, model=create_jigsaw_model(a.arch, n_perms=a.n_perms, n_in=1), cb=JigsawCallback(n_perms=a.n_perms),
                loss=CrossEntropyLossFlat(), metrics=accuracy, chance=1/a.n_perms, size=64, lr=a.lr,
                data=f'MNIST sample digits resized to 64 px, 3x3 tiles, {a.n_perms} permutations')

def task_context(a):
    dls = digits(a, size=64)
    return dict(dls=dls, model=create_context_model(a.arch, n_in=1), cb=ContextCallback(), loss=CrossEntropyLossFlat(),
                metrics=accuracy, chance=1/8, size=64, lr=a.lr_context,
                data='MNIST sample digits resized to 64 px, centre + 1 of 8 neighbours')

def task_inpaint(a):
    dls = digits(a, size=32)
    base_cb = InpaintCallback('block')
    return dict(dls=dls, model=create_inpaint_model(a.arch, n_in=1, img_size=32), cb=InpaintCallback('block'),
                loss=MaskedMSELoss(), metrics=None, baseline=lambda: (Fn(lambda inp: inp), base_cb), size=32, lr=a.lr,
                baseline_name='hole left at the mean pixel', data='MNIST sample digits resized to 32 px, a random '
                'block of half the side hidden; MSE on the hidden pixels (normalised units)')

def task_superres(a):
    dls = digits(a, size=32)
    return dict(dls=dls, model=create_superres_model(a.arch, n_in=1, img_size=32), cb=SuperResCallback(scale=2),
                loss=MaskedMSELoss(), metrics=None, baseline=lambda: (Fn(lambda inp: inp), SuperResCallback(scale=2)),
                baseline_name='bilinear x2 up-sampling', size=32, lr=a.lr,
                data='MNIST sample digits resized to 32 px, shrunk x2 and enlarged back (bilinear); MSE (normalised units)')

TASKS = dict(rotnet=task_rotnet, colorize=task_colorize, jigsaw=task_jigsaw, context=task_context, inpaint=task_inpaint,
             superres=task_superres)


def unzero_bn(body):
    "A copy of `body` with the BatchNorm scales that are all zero (timm's `zero_init_last` residual branches) set to 1"
    body = copy.deepcopy(body)
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any(): nn.init.ones_(m.weight)
    return body


def knn_top1(body, knn_dls):
    trf, trl = get_embeddings(body, knn_dls.train, progress=False)
    tef, tel = get_embeddings(body, knn_dls.valid, progress=False)
    return knn_accuracy(trf, trl, tef, tel, k=20, topk=(1,))['top1']


def run_task(name, a, knn_dls):
    set_seed(a.seed, reproducible=True)
    t = TASKS[name](a)
    model, dls = t['model'], t['dls']
    init = copy.deepcopy(model.encoder.state_dict())
    learn = Learner(dls, model, loss_func=t['loss'], cbs=t['cb'], metrics=t['metrics'])
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        start = time.perf_counter()
        learn.fit_one_cycle(a.epochs, t['lr'])
        secs = time.perf_counter() - start
        after = learn.validate()
        base = None
        if t.get('baseline'):
            bm, bcb = t['baseline']()
            bl = Learner(dls, bm, loss_func=t['loss'], cbs=bcb)
            with bl.no_bar(), bl.no_logging(): base = bl.validate()[0]
    rand = create_timm_body(a.arch, n_in=1)
    rand.load_state_dict(init)
    knn_pre, knn_rand = knn_top1(model.encoder, knn_dls), knn_top1(rand, knn_dls)
    knn_full = knn_top1(unzero_bn(rand), knn_dls)
    classif = t['metrics'] is not None
    fmt = (lambda v: f'{v:.3f}')
    ref = t['chance'] if classif else base
    res = after[1] if classif else after[0]
    beats = res > ref if classif else res < ref
    row = dict(task=name, metric='accuracy' if classif else 'loss (MSE)',
               before=fmt(before[1] if classif else before[0]), after=fmt(after[1] if classif else after[0]),
               baseline=(f"{t['chance']:.3f} (chance)" if classif else f"{base:.3f} ({t['baseline_name']})"),
               train_images=len(dls.train_ds), valid_images=len(dls.valid_ds), size=t['size'], epochs=a.epochs, lr=t['lr'],
               beats_baseline='yes' if beats else '**no**', wall_s=f'{secs:.0f}', knn_pretrained=f'{knn_pre:.3f}', knn_init=f'{knn_rand:.3f}',
               knn_random=f'{knn_full:.3f}',
               knn_gain=f'{100*(knn_pre-knn_full):+.1f} pts')
    return row, t['data']


def machine(load0):
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return (f"{os.cpu_count()}-core CPU, {mem:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}, {gpu}; "
            f"shared with other jobs (load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")


def md_table(rows, cols):
    out = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    return '\n'.join(out + ['| ' + ' | '.join(str(r[c]) for c in cols) + ' |' for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--tasks', default=','.join(TASKS))
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--n-per-class', type=int, default=50, help='training digits per class (labels unused)')
    p.add_argument('--n-valid', type=int, default=256, help='held-out test digits for the pretext metric')
    p.add_argument('--colour-per-photo', type=int, default=100, help='colour crops per photo (colorization)')
    p.add_argument('--n-perms', type=int, default=10, help='jigsaw permutation-set size')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--lr-context', type=float, default=1e-3)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--knn-bank', type=int, default=100, help='training digits per class in the kNN bank')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='benchmarks/results/pretext.md')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    knn_dls = sample_dls(n_per_class=a.knn_bank, bs=256, shuffle=False, seed=a.seed)
    trl = torch.cat([b[1] for b in knn_dls.train]); tel = torch.cat([b[1] for b in knn_dls.valid])
    pixels = knn_accuracy(torch.cat([b[0].flatten(1) for b in knn_dls.train]), trl,
                          torch.cat([b[0].flatten(1) for b in knn_dls.valid]), tel, k=20, topk=(1,))['top1']
    rows, data = [], {}
    for name in [t for t in a.tasks.split(',') if t]:
        row, data[name] = run_task(name, a, knn_dls)
        rows.append(row); print(row, flush=True)
    total = time.perf_counter() - t0
    no_base = [r['task'] for r in rows if r['beats_baseline'] != 'yes']
    over_rand = [r['task'] for r in rows if float(r['knn_pretrained']) > float(r['knn_random'])]
    over_pix = [r['task'] for r in rows if float(r['knn_pretrained']) > pixels]
    names = lambda l: ', '.join(l) if l else 'none'
    summary = (f"Pretext metric after training not better than its trivial baseline: {names(no_base)}. "
               f"Pretrained encoders whose kNN top-1 beats the random-weights encoder (`knn_random`): {names(over_rand)}; "
               f"beats kNN on raw pixels ({pixels:.3f}): {names(over_pix)}. `knn_gain` = knn_pretrained - knn_random.")
    cmd = 'nice -n 5 python benchmarks/bench_pretext.py ' + ' '.join(
        f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if k != 'out')
    cols = ['task', 'metric', 'before', 'after', 'baseline', 'beats_baseline', 'train_images', 'valid_images', 'size', 'epochs', 'lr', 'wall_s',
            'knn_pretrained', 'knn_init', 'knn_random', 'knn_gain']
    text = (f"## Pretext tasks: a short CPU pretraining run ({a.arch}, 1 input channel)\n\n"
            f"Machine: {machine(load0)}; {a.threads} torch thread(s), `nice -n 5`.\n\n"
            f"Command: `{cmd}` ({total/60:.1f} min in all)\n\n"
            f"`before`/`after`: the pretext metric on the held-out validation images (seeded pretext batches) before and "
            f"after `fit_one_cycle({a.epochs}, lr)`, batch size {a.bs}; `wall_s`: seconds of `fit_one_cycle`. "
            f"`knn_pretrained`: cosine kNN (k=20, T=0.1) top-1 on the 1,000 test digits (28 px, 1 channel) with "
            f"{a.knn_bank * 10} training digits as the bank, for the pretrained encoder; `knn_init`: the same encoder with "
            f"its initial weights (seed {a.seed}, before pretraining); `knn_random`: those initial weights with the "
            f"BatchNorm scales that timm initialises to zero (`zero_init_last`, the last BatchNorm of each residual "
            f"branch) set to 1, as torchvision initialises them. At 28 px the zero-initialised branches leave only "
            f"the stem and the strided 1x1 shortcuts, whose last output sees the top-left corner of the image (background "
            f"on these digits), so `knn_init` can sit at chance; `knn_random` is the fairer random-weights baseline. "
            f"Reference: kNN on the raw (normalised) pixels: "
            f"{pixels:.3f}.\n\n{md_table(rows, cols)}\n\n{summary}\n\nData per task:\n\n"
            + '\n'.join(f'- {k}: {v}' for k, v in data.items()) + '\n')
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.tmp'); tmp.write_text(text); os.replace(tmp, out)
    print(text)


if __name__ == '__main__': main()
