"""The six pretext tasks under one fixed CPU budget: pretext metric, then best-stage kNN and linear probe at 10 labels
per class against the same network at random init (unit BatchNorm scales) and raw pixels.

Each task (and each variant of a task: the settings before and after an improvement) pretrains `--arch` with
`fit_one_cycle` for as many epochs as fit in `--budget` CPU seconds of this process (1 torch thread; the seconds per
batch are measured on a throw-away copy first), on the sample's 4,000 training digits (colorization: grey-to-colour on
the colour crops of scikit-image's photos, `colorize.get_colour_sample`: grey digits have no colour). Then the encoder's
stages are read on frozen features (`evaluate.get_stage_embeddings`, spatial average): with 10 labels per class drawn
from the training pool, the stage is chosen by 5-fold cross-validation on those labelled items (`evaluate.best_stage`)
and scored on the test items; mean over 3 label draws. Every cell is cached in `--cells` (JSON) so an interrupted run
resumes; encoders are kept in `--cache`.

    python benchmarks/bench_pretext.py [--tasks rotnet:all4,jigsaw:paper,...] [--budget 300] [--arch resnet10t]
"""
import argparse, os, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from torch import nn
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from bench_utils import add_common_args, start, command, colour_crops_dls, fit_cpu_budget, unzero_bn, pixel_probe, stage_probe, md_table, machine, pct, write_text_atomic
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.files import save_encoder, load_encoder
from self_supervised_fa.pretext.pixel_loss import MaskedMSELoss
from self_supervised_fa.augment.batch import AugmentBatchCallback
from self_supervised_fa.augment.views import small_image_augs
from self_supervised_fa.pretext.rotnet import RotNetCallback, create_rotnet_model
from self_supervised_fa.pretext.colorize import ColorizeCallback, create_colorize_model, ABBinLoss, ab_prior
from self_supervised_fa.pretext.jigsaw import JigsawCallback, create_jigsaw_model
from self_supervised_fa.pretext.context import ContextCallback, create_context_model
from self_supervised_fa.pretext.inpaint import InpaintCallback, create_inpaint_model
from self_supervised_fa.pretext.superres import SuperResCallback, create_superres_model


class Fn(nn.Module):
    "A parameter-free 'model' for trivial baselines: `fn(inputs)`"
    def __init__(self, fn):
        super().__init__(); self.fn = fn
        self.unused = nn.Parameter(torch.zeros(0))   # fastai reads the device from the first parameter
    def forward(self, x): return self.fn(x)


def digits(a, size=None, bs=None):
    "Pretext data: the sample's 4,000 training digits (labels unused), the first `--n-valid` test digits for the pretext metric"
    return sample_dls(valid_df=load_sample_df('test').iloc[:a.n_valid], size=size, bs=bs or a.bs, seed=a.seed)


def colour_dls(a, bs=None, grey=False): return colour_crops_dls(a.colour_per_photo, bs or a.bs, grey)


# --- tasks: each returns the pretext setup; variants pin every setting they compare, so later default changes leave them alone
def digit_augs(size):
    "Augmentation for digits before a pretext task: crops of 50-100 % of the image, brightness/contrast jitter, no flip"
    return AugmentBatchCallback(small_image_augs(size, crop_scale=(0.5, 1.), flip_p=0.))

def task_rotnet(a, v):
    cb = RotNetCallback(**dict(one=dict(all_rotations=False, valid_all=True), all4=dict(all_rotations=True),
                               all4aug=dict(all_rotations=True))[v])
    return dict(dls=digits(a), model=create_rotnet_model(a.arch, n_in=1), cb=[cb] + ([digit_augs(28)] if v == 'all4aug' else []),
                loss=CrossEntropyLossFlat(), metrics=accuracy, chance=0.25, lr=a.lr, eval='digits28',
                data=dict(one='one random rotation per image (valid: all 4)', all4='all 4 rotations of every image in the batch',
                          all4aug='all 4 rotations of every image, of training images augmented first (`AugmentBatchCallback`: '
                                  'crops of 50-100 %, brightness/contrast jitter)')[v])

_COLOUR = dict(rgb=dict(space='rgb'), lab=dict(space='lab'), bins=dict(space='lab'))
def task_colorize(a, v):
    kw, dls = _COLOUR[v], colour_dls(a)
    cb, base_cb = ColorizeCallback(grey_channels=1, **kw), ColorizeCallback(grey_channels=1, **kw)
    if v == 'bins':   # Zhang et al.: ab bins, soft-encoded, rarity-weighted; baseline: the training colour distribution everywhere
        prior = ab_prior(dls)
        loss = ABBinLoss(prior)
        model = create_colorize_model(a.arch, space='lab', n_in=1, img_size=32, n_bins=loss.n_bins)
        base = lambda inp: prior.clamp_min(1e-8).log().view(1, -1, 1, 1).expand(len(inp), -1, *inp.shape[2:]).to(inp)
        return dict(dls=dls, model=model, cb=cb, loss=loss, metrics=None, baseline=lambda: (Fn(base), base_cb),
                    baseline_name='the colour prior', lr=a.lr, eval='colour32',
                    data=f"colour crops, 1-channel luminance in, scores over {loss.n_bins} ab bins out, class-rebalanced cross-entropy (`ABBinLoss`)")
    grey = (lambda inp: base_cb.grey(inp).expand(-1, 3, -1, -1)) if kw['space'] == 'rgb' else (lambda inp: torch.zeros_like(inp).expand(-1, 2, -1, -1))
    return dict(dls=dls, model=create_colorize_model(a.arch, space=kw['space'], n_in=1, img_size=32), cb=cb,
                loss=MaskedMSELoss(), metrics=None, baseline=lambda: (Fn(grey), base_cb), baseline_name='grey prediction',
                lr=a.lr, eval='colour32', data=f"colour crops, 1-channel luminance in, {kw['space']} out, MSE")

_PATCH = dict(base=dict(tile_norm=False), paper=dict(tile_norm=True), paperaug=dict(tile_norm=True))
_AUG_NOTE = ', training images augmented first (crops of 50-100 %, brightness/contrast jitter)'
def _augs(v, size): return [digit_augs(size)] if v.endswith('aug') else []   # '...aug' variants: `digit_augs` before the task
def _aug_note(v): return _AUG_NOTE if v.endswith('aug') else ''

def task_jigsaw(a, v):
    n_perms = dict(base=a.n_perms, paper=100, paperaug=100)[v]
    return dict(dls=digits(a, size=64), model=create_jigsaw_model(a.arch, n_perms=n_perms, n_in=1),
                cb=[JigsawCallback(n_perms=n_perms, jitter=2, gap_frac=0.125, **_PATCH[v])] + _augs(v, 64), loss=CrossEntropyLossFlat(),
                metrics=accuracy, chance=1/n_perms, lr=a.lr, eval='digits64',
                data=f"digits at 64 px, 3x3 tiles, gap 1/8 tile, jitter 2 px, {n_perms} permutations" +
                     (", each tile normalised" if _PATCH[v]['tile_norm'] else '') + _aug_note(v))

def task_context(a, v):
    return dict(dls=digits(a, size=64), model=create_context_model(a.arch, n_in=1),
                cb=[ContextCallback(jitter=1, gap_frac=0.5, **_PATCH[v])] + _augs(v, 64), loss=CrossEntropyLossFlat(), metrics=accuracy,
                chance=1/8, lr=a.lr_context, eval='digits64',
                data="digits at 64 px, centre + 1 of 8 neighbours, gap 1/2 tile, jitter 1 px" +
                     (", each patch normalised" if _PATCH[v]['tile_norm'] else '') + _aug_note(v))

def task_inpaint(a, v):
    return dict(dls=digits(a, size=32), model=create_inpaint_model(a.arch, n_in=1, img_size=32), cb=[InpaintCallback('block')] + _augs(v, 32),
                loss=MaskedMSELoss(), metrics=None, baseline=lambda: (Fn(lambda inp: inp), InpaintCallback('block')),
                baseline_name='hole left at the mean pixel', lr=a.lr, eval='digits32',
                data='digits at 32 px, a random block of half the side hidden, MSE on the hole' + _aug_note(v))

def task_superres(a, v):
    return dict(dls=digits(a, size=32), model=create_superres_model(a.arch, n_in=1, img_size=32), cb=[SuperResCallback(scale=2)] + _augs(v, 32),
                loss=MaskedMSELoss(), metrics=None, baseline=lambda: (Fn(lambda inp: inp), SuperResCallback(scale=2)),
                baseline_name='bilinear x2', lr=a.lr, eval='digits32',
                data='digits at 32 px, shrunk x2 and enlarged back, MSE' + _aug_note(v))

TASKS = dict(rotnet=(task_rotnet, ('one', 'all4', 'all4aug')), colorize=(task_colorize, tuple(_COLOUR)), jigsaw=(task_jigsaw, ('base', 'paper', 'paperaug')),
             context=(task_context, ('base', 'paper', 'paperaug')), inpaint=(task_inpaint, ('base', 'aug')), superres=(task_superres, ('base', 'aug')))
DEFAULT = 'rotnet:one,rotnet:all4,colorize:rgb,colorize:lab,colorize:bins,jigsaw:base,jigsaw:paper,context:base,context:paper,inpaint:base,superres:base'


def eval_dls(a, name):
    "Labelled data the encoders are probed on: digits at 28/32/64 px (train pool 4,000, test 1,000) or the grey colour crops"
    if name == 'colour32': return colour_dls(a, bs=256, grey=True)
    return sample_dls(size=int(name[6:]) if name != 'digits28' else None, bs=256, seed=a.seed, shuffle=False)


def pretext_scores(learn, t):
    "(metric, value) of the learner on its validation pretext batches, and of the trivial baseline"
    with learn.no_bar(), learn.no_logging(): v = learn.validate()
    if t['metrics'] is not None: return float(v[1]), t['chance']
    bm, bcb = t['baseline']()
    bl = Learner(learn.dls, bm, loss_func=t['loss'], cbs=bcb)
    with bl.no_bar(), bl.no_logging(): base = bl.validate()[0]
    return float(v[0]), float(base)


def run_task(a, name, variant, cells):
    key = f'{name}:{variant}/{a.arch}/b{a.budget}/s{a.seed}'
    if cells.get(key): return cells.get(key)
    set_seed(a.seed, reproducible=True)
    t = TASKS[name][0](a, variant)
    model = t['model']
    init = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    learn = Learner(t['dls'], model, loss_func=t['loss'], cbs=t['cb'], metrics=t['metrics'])
    before, ref = pretext_scores(learn, t)
    spent = fit_cpu_budget(learn, a.budget, t['lr'])
    after, _ = pretext_scores(learn, t)
    save_encoder(model.encoder, Path(a.cache)/key.replace('/', '_').replace(':', '-'))
    for ev in {t['eval'], 'digits28'}:   # random init probed where this encoder is (colorization: also on digits)
        if not cells.get(f"random/{a.arch}/{ev}/s{a.seed}"):
            rnd = create_timm_body(a.arch, n_in=1); rnd.load_state_dict(init)
            cells.put(f"random/{a.arch}/{ev}/s{a.seed}", stage_probe(unzero_bn(rnd), eval_dls(a, ev)))
    res = dict(task=name, variant=variant, data=t['data'], eval=t['eval'], lr=t['lr'], bs=a.bs, train_images=len(t['dls'].train_ds),
               metric='accuracy' if t['metrics'] is not None else 'loss', before=before, after=after, reference=ref,
               reference_name='chance' if t['metrics'] is not None else t['baseline_name'],
               probe=stage_probe(model.encoder, eval_dls(a, t['eval'])), **spent)
    if name == 'colorize': res['probe_digits28'] = stage_probe(model.encoder, eval_dls(a, 'digits28'))
    return cells.put(key, res)


def report(a, cells, keys, load0, total):
    rows = []
    for key in keys:
        r = cells.get(key)
        if r is None: continue
        rnd = cells.get(f"random/{a.arch}/{r['eval']}/s{a.seed}")
        pix = cells.get(f"pixels/{r['eval']}")
        better = r['after'] > r['reference'] if r['metric'] == 'accuracy' else r['after'] < r['reference']
        gain = 100 * (r['probe']['linear'] - rnd['linear'])
        rows.append(dict(task=f"{r['task']}:{r['variant']}", metric=r['metric'], before=f"{r['before']:.3f}", after=f"{r['after']:.3f}",
                         ref=f"{r['reference']:.3f} ({r['reference_name']})", beats='yes' if better else '**no**',
                         epochs=r['epochs'], cpu=r['cpu_s'], wall=r['wall_s'], eval=r['eval'],
                         knn=f"{pct(r['probe']['knn'])} (s{','.join(map(str, r['probe']['knn_stage']))})",
                         lin=f"{pct(r['probe']['linear'])} (s{','.join(map(str, r['probe']['linear_stage']))})",
                         rknn=f"{pct(rnd['knn'])}", rlin=f"{pct(rnd['linear'])} (s{','.join(map(str, rnd['linear_stage']))})",
                         pix=f"{pct(pix['knn'])} / {pct(pix['linear'])}", gain=f"{gain:+.1f}", target='met' if gain >= 10 else '**missed**',
                         per_stage=' '.join(pct(v) for v in r['probe']['per_stage_linear'].values()),
                         rper_stage=' '.join(pct(v) for v in rnd['per_stage_linear'].values())))
    cols = ['task', 'metric', 'before', 'after', 'ref', 'beats', 'epochs', 'cpu', 'wall', 'eval', 'knn', 'lin', 'rknn', 'rlin', 'pix', 'gain', 'target']
    names = ['task:variant', 'pretext metric', 'before', 'after', 'trivial baseline', 'beats it', 'epochs', 'CPU s', 'wall s', 'probed on',
             'kNN % (stages)', 'linear % (stages)', 'random kNN %', 'random linear % (stages)', 'pixels kNN / linear %', 'linear gain (pts)', '>= +10 pts']
    diag = md_table(rows, ['task', 'per_stage', 'rper_stage'], ['task:variant', 'linear % per stage, pretrained (test, diagnostic)',
                                                               'linear % per stage, random init'])
    cmd = command('bench_pretext.py', a)
    colour = [cells.get(k) for k in keys if k.startswith('colorize')]
    colour_digits = '; '.join(f"{r['task']}:{r['variant']} on digits: kNN {pct(r['probe_digits28']['knn'])}, linear {pct(r['probe_digits28']['linear'])} "
                              f"(random init {pct(cells.get(f'random/{a.arch}/digits28/s{a.seed}')['linear'])})"
                              for r in colour if r and cells.get(f'random/{a.arch}/digits28/s{a.seed}'))
    text = (f"## Pretext tasks under a fixed CPU budget ({a.arch}, 1 input channel)\n\n"
            f"Machine: {machine(load0, a.threads)}.\n\nCommand: `{cmd}` ({total/60:.0f} min for the cells run this time; "
            f"finished cells are cached in `{a.cells}`)\n\n"
            f"**Budget**: each task trains `fit_one_cycle` for as many epochs as fit in {a.budget} CPU seconds of one torch thread "
            f"(seconds per batch measured first on a throw-away copy; `CPU s` is what the fit really spent, validation included), "
            f"batch size {a.bs} images (RotNet `all4`: x4 rotations), on the sample's 4,000 training digits (colorization: "
            f"the {a.colour_per_photo*5*3//4} training crops of the colour sample). `before`/`after`: the pretext metric on held-out "
            f"images (seeded pretext batches) before and after.\n\n"
            f"**Probe**: frozen features of every stage (timm `forward_intermediates`, spatial average), 10 labels per class from the "
            f"training pool; the stage is chosen by 5-fold cross-validation on those 100 (colour: 50) labelled items only "
            f"(`best_stage`; chosen stage of each label draw in brackets, s0 = stem .. s4 = last stage) and scored on the test items "
            f"(digits: 1,000; colour crops: {a.colour_per_photo*5//4}); mean of 3 label draws. `random`: the same network with the "
            f"task's initial weights and timm's zero-initialised BatchNorm scales set to 1 (without that, the residual branches are off "
            f"and random features sit near chance), through the same stage choice. `probed on`: digits at the task's pretext size "
            f"(28, 32 or 64 px), or the luminance of the colour crops labelled by photo (5 classes). Target: linear gain >= +10 points.\n\n"
            f"{md_table(rows, cols, names)}\n\n"
            f"Per-stage test accuracy of the linear probe (mean of the 3 draws; shown to judge the cross-validated choice, never used "
            f"to make it):\n\n{diag}\n\n"
            + (f"Colorization encoders probed on the digits (28 px) instead: {colour_digits}.\n\n" if colour_digits else '')
            + "Data per task:\n\n" + '\n'.join(f"- {k.split('/')[0]}: {cells.get(k)['data']}" for k in keys if cells.get(k)) + '\n')
    write_text_atomic(a.out, text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--tasks', default=DEFAULT, help='task:variant list')
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--budget', type=int, default=300, help='CPU seconds of training per task')
    p.add_argument('--n-valid', type=int, default=256, help='held-out test digits for the pretext metric')
    p.add_argument('--colour-per-photo', type=int, default=200, help='colour crops per photo (colorization)')
    p.add_argument('--n-perms', type=int, default=10, help="jigsaw permutation-set size of the 'base' variant")
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--lr-context', type=float, default=1e-3)
    p.add_argument('--bs', type=int, default=64)
    add_common_args(p, 'pretext')
    p.add_argument('--report-only', type=int, default=0)
    a = p.parse_args()
    load0, t0, cells = start(a)
    keys = []
    for tv in [t for t in a.tasks.split(',') if t]:
        name, variant = tv.split(':')
        if variant not in TASKS[name][1]: raise ValueError(f"{name} has variants {TASKS[name][1]}, not {variant!r}")
        keys.append(f'{name}:{variant}/{a.arch}/b{a.budget}/s{a.seed}')
    if not a.report_only:
        for ev in sorted({TASKS[k.split(':')[0]][0] is task_colorize and 'colour32' or None for k in keys} - {None}) + ['digits28', 'digits32', 'digits64']:
            if not cells.get(f'pixels/{ev}'): cells.put(f'pixels/{ev}', pixel_probe(eval_dls(a, ev)))
        for key in keys:
            name, variant = key.split('/')[0].split(':')
            r = run_task(a, name, variant, cells)
            print(key, {k: v for k, v in r.items() if k not in ('data', 'encoder')}, flush=True)
    report(a, cells, keys, load0, time.perf_counter() - t0)


if __name__ == '__main__': main()
