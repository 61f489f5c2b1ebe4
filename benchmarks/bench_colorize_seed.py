"""Colorization as the colour write-up we started from ran it: pretrain on all the colour images without labels, then
fine-tune with 10 labels per class, against the same network from scratch.

The write-up did it on CIFAR-10 (10 labels per class: 0.11 from scratch, 0.21 pretrained). No CIFAR here (nothing is
downloaded): the colour images are the crops of scikit-image's photos (`colorize.get_colour_sample`, 32 px, labelled
by their photo: 5 classes; 3/4 of each photo's crops for training, 1/4 held out as the test set). The colorizer
(`--arch`, 1 input channel: the luminance) is pretrained on every crop, test crops included, labels unused, for
`--budget` CPU seconds (`fit_one_cycle`), in each variant: RGB regression, Lab ab regression, Lab ab bins with
class rebalancing (`ABBinLoss`). Downstream, `label_efficiency` on the luminance of the crops: 10 labels per class
(3 draws) from the training crops, linear probe and fine-tuning of the whole network (`--ft-epochs`), at the embedding
(`stage=None`) and at the stage chosen on the labelled items (`stage='best'`, the network cut there), against the
same architecture from scratch through the same procedure.

`--photos all` uses the nine photos of `photos.PHOTO_CLASSES` instead (adding scikit-learn's china and flower,
matplotlib's grace_hopper and scikit-image's retina): 9 classes, a harder task from scratch.

    python benchmarks/bench_colorize_seed.py [--variants rgb,lab,bins] [--budget 600] [--photos all] [--threads 1]
"""
import argparse, os, sys, time
from pathlib import Path
import numpy as np, torch
from fastai.learner import Learner
from fastai.torch_core import set_seed
from bench_utils import add_common_args, start, command, colour_crops_dls, fit_cpu_budget, md_table, machine, write_text_atomic, pretrained_cell
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.files import load_encoder
from self_supervised_fa.evaluate.label_efficiency import label_efficiency, Probe, FineTune
from self_supervised_fa.pretext.pixel_loss import MaskedMSELoss
from self_supervised_fa.pretext.colorize import ColorizeCallback, create_colorize_model, ABBinLoss, ab_prior
from self_supervised_fa.data.colour import COLOUR_PHOTOS
from self_supervised_fa.data.photos import PHOTO_CLASSES


def photo_list(a) -> tuple:
    "The photos of `--photos`: 'five' (`colorize.COLOUR_PHOTOS`), 'all' (`photos.PHOTO_CLASSES`) or comma-separated names"
    return {'five': COLOUR_PHOTOS, 'all': tuple(PHOTO_CLASSES)}.get(a.photos) or tuple(a.photos.split(','))

def photo_tag(a) -> str:
    "The part of a cell's key naming its photos ('' for the default five, so that earlier cells keep their keys)"
    ps = photo_list(a)
    return '' if ps == COLOUR_PHOTOS else f'/photos{len(ps)}' + ('' if a.photos == 'all' else '-' + a.photos)


def pretrain(a, variant, cells):
    """The colorizer pretrained on every crop: its pretext losses and a function giving the encoder file (in the gitignored
    cache; trained again when it is missing)"""
    def train():
        set_seed(a.seed, reproducible=True)
        dls = colour_crops_dls(a.n_per_photo, a.bs, all_train=True, seed=a.seed, photos=photo_list(a))
        space = 'rgb' if variant == 'rgb' else 'lab'
        if variant == 'bins':
            loss = ABBinLoss(ab_prior(dls))
            model = create_colorize_model(a.arch, space='lab', n_in=1, img_size=32, n_bins=loss.n_bins)
        else: loss, model = MaskedMSELoss(), create_colorize_model(a.arch, space=space, n_in=1, img_size=32)
        learn = Learner(dls, model, loss_func=loss, cbs=ColorizeCallback(space, grey_channels=1))
        with learn.no_bar(), learn.no_logging(): before = float(learn.validate()[0])
        spent = fit_cpu_budget(learn, a.budget, a.lr)
        with learn.no_bar(), learn.no_logging(): after = float(learn.validate()[0])
        return model.encoder, dict(loss_before=before, loss_after=after, images=len(dls.train_ds), **spent)
    return pretrained_cell(cells, f'pretext/{a.arch}/{variant}{photo_tag(a)}/b{a.budget}/s{a.seed}', a.cache, train)


def downstream(a, name, enc_path, seed, stage, cells):
    "`label_efficiency` at `a.labels` per class, the pretrained encoder (`enc_path()`: its file) against from scratch"
    fz = f'fz{a.ft_freeze_epochs}m{a.ft_lr_mult:g}' if (a.ft_freeze_epochs, a.ft_lr_mult) != (0, 1) else ''
    fz += '' if a.ft_head == 'fastai' else f'-{a.ft_head}'
    key = f'down/{a.arch}/{name}{photo_tag(a)}/b{a.budget}/ft{a.ft_epochs}{fz}/{stage}/s{seed}'
    if cells.get(key): return cells.get(key)
    enc = load_encoder(enc_path(), create_timm_body(a.arch, n_in=1))
    dls = colour_crops_dls(a.n_per_photo, 256, grey=True, photos=photo_list(a))
    df = label_efficiency({name: enc}, dls, budgets=[a.labels], methods=('linear', 'finetune'), seed=seed, progress=False, probe=Probe(stage=None if stage == 'embed' else stage), finetune=FineTune(epochs=a.ft_epochs, bs=16, freeze_epochs=a.ft_freeze_epochs, lr_mult=a.ft_lr_mult, head=a.ft_head))
    return cells.put(key, df.to_dict('records'))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--variants', default='rgb,lab,bins')
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--budget', type=int, default=600, help='CPU seconds of colorization pretraining')
    p.add_argument('--n-per-photo', type=int, default=200)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--labels', type=int, default=10, help='labels per class downstream')
    p.add_argument('--ft-epochs', type=int, default=20)
    p.add_argument('--ft-freeze-epochs', type=int, default=0, help="fine_tune's head-only epochs first (pretrained; from scratch trains that many more epochs)")
    p.add_argument('--ft-lr-mult', type=float, default=1, help="fine_tune's lr_mult (discriminative learning rates)")
    p.add_argument('--ft-head', default='fastai', choices=('fastai', 'probe'), help="pretrained encoders: a new fastai head, or LP-FT ('probe': the linear probe as the head, then the whole network)")
    p.add_argument('--stages', default='embed,best')
    p.add_argument('--photos', default='five', help="'five' (get_colour_sample's default set), 'all' (the nine of photos.PHOTO_CLASSES) or names")
    add_common_args(p, 'colorize_seed', seeds=True)
    p.set_defaults(seeds=','.join(map(str, range(10))))   # 10 paired draws: with 50 labels one run moves by points with its batch order
    a = p.parse_args()
    np_ = len(photo_list(a))
    load0, t0, cells = start(a)
    seeds = [int(s) for s in a.seeds.split(',')]
    rows, pre_rows = [], []
    for v in a.variants.split(','):
        pre, enc_path = pretrain(a, v, cells)
        pre_rows.append(dict(variant=v, epochs=pre['epochs'], cpu=pre['cpu_s'], wall=pre['wall_s'], images=pre['images'],
                             loss=f"{pre['loss_before']:.3f} -> {pre['loss_after']:.3f}"))
        print(v, pre, flush=True)
        for stage in a.stages.split(','):
            res = [downstream(a, v, enc_path, s, stage, cells) for s in seeds]
            get = lambda enc, col: [next(r[col] for r in rr if r['encoder'] == enc) for rr in res]
            st = lambda enc, col: ','.join(str(next(r.get(col, '-') for r in rr if r['encoder'] == enc)) for rr in res)
            pf, sf = get(v, 'finetune'), get('from scratch', 'finetune')
            gains = 100 * (np.array(pf) - np.array(sf))   # paired: the same label draw for both
            gain = gains.mean()
            rows.append(dict(variant=v, stage=stage, pft=f'{100*np.mean(pf):.1f} ± {100*np.std(pf):.1f}',
                             sft=f'{100*np.mean(sf):.1f} ± {100*np.std(sf):.1f}', gain=f'{gain:+.1f} ± {gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else 0:.1f}',
                             target='met' if gain >= 5 else '**missed**', plin=f"{100*np.mean(get(v, 'linear')):.1f}",
                             slin=f"{100*np.mean(get('from scratch', 'linear')):.1f}",
                             stages=f"{st(v, 'finetune_stage')} / {st('from scratch', 'finetune_stage')}" if stage != 'embed' else '-'))
            print(rows[-1], flush=True)
    cmd = command('bench_colorize_seed.py', a)
    text = (f"## Colorization as the colour write-up ran it: pretrain on all images, fine-tune with {a.labels} labels per class\n\n"
            f"Machine: {machine(load0, a.threads)}.\n\nCommand: `{cmd}` ({(time.perf_counter() - t0)/60:.0f} min for the "
            f"cells run this time; cells cached in `{a.cells}`)\n\n"
            f"Data: {a.n_per_photo} crops of 32 px from each of {np_} colour photos ({', '.join(photo_list(a))}; `colorize.get_colour_sample`), "
            f"labelled by photo; pretraining reads all {np_*a.n_per_photo} without labels, downstream draws {a.labels} labels per "
            f"class from the {a.n_per_photo*3//4*np_} training crops and tests on the {a.n_per_photo//4*np_} others (their luminance, "
            f"the colorizer's input). The write-up: CIFAR-10, 10 labels per class, 0.11 from scratch and 0.21 pretrained.\n\n"
            f"### Pretraining ({a.arch}, 1 input channel, {a.budget} CPU s of one thread, `fit_one_cycle` at {a.lr:g}, batch {a.bs})\n\n"
            + md_table(pre_rows, ['variant', 'images', 'epochs', 'cpu', 'wall', 'loss'],
                       ['variant', 'images', 'epochs', 'CPU s', 'wall s', 'pretext loss (before -> after)'])
            + f"\n\n### Downstream: test accuracy % at {a.labels} labels per class (mean ± sd over {len(seeds)} label draws)\n\n"
              f"`label_efficiency`: fine-tuning = the whole network with a fastai head, {a.ft_epochs} epochs of `fit_one_cycle` "
              + (f"after {a.ft_freeze_epochs} head-only epochs (`fine_tune`, lr_mult {a.ft_lr_mult:g}; from scratch: {a.ft_epochs + a.ft_freeze_epochs} epochs) " if a.ft_freeze_epochs else '')
              + ("with LP-FT for the pretrained encoders (`ft_head='probe'`: the head is one linear layer that starts as the "
                 f"linear probe, then the whole network trains at lr/{a.ft_lr_mult:g} (body) .. lr (head); from scratch keeps the fastai head) " if a.ft_head == 'probe' else '') +
              f"(lr 1e-3 pretrained, 2e-3 from scratch), batch 16; `embed`: the encoder as a whole; `best`: the stage chosen by "
              f"cross-validation on the labelled crops, the network cut there (stages: pretrained / from scratch, per draw). "
              f"Target: pretrained >= from scratch + 5 points.\n\n"
            + md_table(rows, ['variant', 'stage', 'pft', 'sft', 'gain', 'target', 'plin', 'slin', 'stages'],
                       ['pretext', 'features', 'fine-tuned, pretrained', 'fine-tuned, from scratch', 'gain (pts, ± s.e. of the paired draws)', '>= +5',
                        'linear probe, pretrained', 'linear probe, from scratch', 'fine-tuned from stage']) + '\n')
    write_text_atomic(a.out, text)
    print(text)


if __name__ == '__main__': main()
