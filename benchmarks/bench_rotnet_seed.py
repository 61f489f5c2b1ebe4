"""RotNet on MNIST as the lecture we started from ran it, and as this library runs it, side by side.

The lecture: a small CNN (two conv layers) learns to predict rotations on 10,000 unlabelled MNIST digits, then is
fine-tuned on 1,000 labelled digits (100 per class) and compared with the same CNN trained on those 1,000 labels from
random weights with the same recipe (81.00 % against 78.67 %). Here: the sample's 4,000 training digits are the
unlabelled pool (the sample has 5,000 digits in all; 1,000 are the test set), 100 labels per class are drawn from them
(3 draws), and the test accuracy is on the 1,000 test digits. Two networks: `mnist_cnn2` (`seed_models.py`, the
PyTorch MNIST example's two-conv network) and timm's `resnet10t`. Two recipes:

- **lecture**: pretext with one random rotation per image, plain PyTorch Adam at a constant learning rate, batch 64;
  downstream the whole network with a new last layer (linear), the same optimiser for the pretrained and the random
  network, for several epoch counts (where the lecture's own count is not known to us);
- **ours**: pretext with all four rotations of every image (`RotNetCallback(all_rotations=True)`), `fit_one_cycle`;
  downstream `label_efficiency` (fastai head, `fit_one_cycle` on the whole network; the resnet reads and is cut at the
  stage chosen by cross-validation on the labelled items, `stage='best'`), against the same network from scratch.

    python benchmarks/bench_rotnet_seed.py [--archs mnist_cnn2,resnet10t] [--threads 1]
"""
import argparse, copy, os, sys, time
from functools import partial
from pathlib import Path
import numpy as np, torch
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import set_seed
import seed_models   # registers mnist_cnn2 with timm
from bench_utils import add_common_args, start, command, md_table, machine, write_text_atomic, pretrained_cell
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.classifier import create_classifier
from self_supervised_fa.encoders.files import load_encoder
from self_supervised_fa.evaluate.probes import budget_indices
from self_supervised_fa.evaluate.label_efficiency import subset_dls, label_efficiency, Probe, FineTune
from self_supervised_fa.pretext.rotnet import RotNetCallback, create_rotnet_model

ADAM = partial(OptimWrapper, opt=torch.optim.Adam)   # plain PyTorch Adam, no weight decay: the lecture's optimiser
LINEAR = dict(lin_ftrs=[], ps=0., first_bn=False)   # fastai's create_head reduced to one Linear layer


def pretext(a, arch, recipe, cells):
    """RotNet on the 4,000 training digits: the pretext accuracy (all 4 rotations of 256 test digits) and a function giving
    the encoder file (in the gitignored cache; trained again when it is missing)"""
    def train():
        set_seed(a.seed, reproducible=True)
        dls = sample_dls(valid_df=load_sample_df('test').iloc[:256], bs=64, seed=a.seed)
        lecture = recipe == 'lecture'
        model = create_rotnet_model(arch, n_in=1, **(LINEAR if lecture or arch == 'mnist_cnn2' else {}))
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                        cbs=RotNetCallback(all_rotations=not lecture, valid_all=True), **(dict(opt_func=ADAM) if lecture else {}))
        c0, w0 = time.process_time(), time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            if lecture: learn.fit(a.pretext_epochs, a.lecture_lr)
            else: learn.fit_one_cycle(a.pretext_epochs, a.lr)
            acc = float(learn.validate()[1])
        return model.encoder, dict(rotation_acc=acc, cpu_s=round(time.process_time() - c0), wall_s=round(time.perf_counter() - w0))
    return pretrained_cell(cells, f'pretext/{arch}/{recipe}/e{a.pretext_epochs}/s{a.seed}', a.cache, train)


def lecture_downstream(a, arch, enc_path, epochs, seed, cells, tag):
    """The lecture's downstream: the whole network + a new last layer, plain Adam at a constant rate, `epochs` epochs, 100
    labels per class; `enc_path`: a function giving the pretrained encoder's file (None: random init)"""
    key = f'lecture/{arch}/{tag}/e{epochs}/s{seed}'
    if cells.get(key) is not None: return cells.get(key)
    set_seed(seed, reproducible=True)
    dls = sample_dls(bs=64, seed=seed)
    trl = torch.as_tensor(np.array([int(y) for _, y in dls.train_ds]))
    sub = subset_dls(dls, budget_indices(trl, 100, seed, classes=np.arange(10)), bs=64)
    test = sub.valid
    sub.valid = test.new(dataset=test.dataset[:64])   # validation during fit on a few digits only: the test comes once, at the end
    enc = create_timm_body(arch, n_in=1)
    if enc_path: enc = load_encoder(enc_path(), enc)
    learn = Learner(sub, create_classifier(enc, 10, **LINEAR), loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=ADAM)
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, a.lecture_lr)
        return cells.put(key, float(learn.validate(dl=test)[1]))


def our_downstream(a, arch, enc_path, seed, cells):
    "label_efficiency at 100 labels per class: linear probe and fine-tuning, pretrained (`enc_path()`: its file) and from scratch"
    key = f'ours/{arch}/e{a.ft_epochs}/s{seed}'
    if cells.get(key): return cells.get(key)
    enc = load_encoder(enc_path(), create_timm_body(arch, n_in=1))
    stage = None if arch == 'mnist_cnn2' else 'best'   # the small CNN: its fc 1 embedding (the conv stages are read flat by fc 1)
    df = label_efficiency({'rotnet': enc}, sample_dls(bs=256, seed=seed), budgets=[100], methods=('linear', 'finetune'), seed=seed, progress=False, probe=Probe(stage=stage), finetune=FineTune(epochs=a.ft_epochs))
    return cells.put(key, df.to_dict('records'))


def mean_sd(v): return f'{100*np.mean(v):.2f} ± {100*np.std(v):.2f}' if len(v) > 1 else f'{100*v[0]:.2f}'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--archs', default='mnist_cnn2,resnet10t')
    p.add_argument('--pretext-epochs', type=int, default=10)
    p.add_argument('--lecture-lr', type=float, default=1e-3)
    p.add_argument('--lecture-epochs', default='1,3,10,30', help='downstream epochs of the lecture recipe')
    p.add_argument('--lr', type=float, default=3e-3, help='pretext learning rate of our recipe')
    p.add_argument('--ft-epochs', type=int, default=10)
    add_common_args(p, 'rotnet_seed', seeds=True)
    a = p.parse_args()
    load0, t0, cells = start(a)
    seeds, eps = [int(s) for s in a.seeds.split(',')], [int(e) for e in a.lecture_epochs.split(',')]
    sections = []
    for arch in a.archs.split(','):
        pre, encf = {}, {}
        for r in ('lecture', 'ours'): pre[r], encf[r] = pretext(a, arch, r, cells)
        print(arch, pre, flush=True)
        rows = []
        for e in eps:
            ssl = [lecture_downstream(a, arch, encf['lecture'], e, s, cells, 'rotnet-lecture') for s in seeds]
            ssl4 = [lecture_downstream(a, arch, encf['ours'], e, s, cells, 'rotnet-ours') for s in seeds]
            sup = [lecture_downstream(a, arch, None, e, s, cells, 'supervised') for s in seeds]
            rows.append(dict(epochs=e, ssl=mean_sd(ssl), ssl4=mean_sd(ssl4), sup=mean_sd(sup),
                             holds='yes' if np.mean(ssl) >= np.mean(sup) else 'no', holds4='yes' if np.mean(ssl4) >= np.mean(sup) else 'no',
                             diff=f'{100*(np.mean(ssl) - np.mean(sup)):+.2f}', diff4=f'{100*(np.mean(ssl4) - np.mean(sup)):+.2f}'))
            print(arch, rows[-1], flush=True)
        ours = [our_downstream(a, arch, encf['ours'], s, cells) for s in seeds]
        get = lambda enc, col: [next(r[col] for r in o if r['encoder'] == enc) for o in ours]
        stages = lambda enc, col: ','.join(str(next(r.get(col, '-') for r in o if r['encoder'] == enc)) for o in ours)
        orow = [dict(enc=enc, lin=mean_sd(get(enc, 'linear')), ft=mean_sd(get(enc, 'finetune')),
                     ls=stages(enc, 'linear_stage'), fs=stages(enc, 'finetune_stage')) for enc in ('rotnet', 'from scratch')]
        holds = np.mean(get('rotnet', 'finetune')) >= np.mean(get('from scratch', 'finetune'))
        sections.append(
            f"### {arch}\n\nPretext (4,000 digits, {a.pretext_epochs} epochs): lecture recipe (one random rotation, Adam "
            f"{a.lecture_lr:g} constant) rotation accuracy {100*pre['lecture']['rotation_acc']:.1f} % in {pre['lecture']['cpu_s']} CPU s; "
            f"ours (all four rotations, `fit_one_cycle` at {a.lr:g}) {100*pre['ours']['rotation_acc']:.1f} % in {pre['ours']['cpu_s']} CPU s.\n\n"
            f"Lecture recipe downstream (whole network + new last layer, Adam {a.lecture_lr:g} constant, batch 64), test accuracy %, "
            f"mean ± sd over {len(seeds)} label draws:\n\n"
            + md_table(rows, ['epochs', 'ssl', 'sup', 'diff', 'holds', 'ssl4', 'diff4', 'holds4'],
                       ['downstream epochs', 'RotNet (lecture pretext)', 'supervised (random init)', 'difference',
                        'self-supervised >= supervised', 'RotNet (our pretext)', 'difference', 'holds'])
            + f"\n\nOur recipe downstream (`label_efficiency`, {a.ft_epochs} epochs of `fit_one_cycle`, lr 1e-3 pretrained / 2e-3 "
              f"from scratch, fastai head{'' if arch == 'mnist_cnn2' else ', stage chosen on the labelled items and the network cut there'}), "
              f"test accuracy %:\n\n"
            + md_table(orow, ['enc', 'lin', 'ls', 'ft', 'fs'], ['encoder', 'linear probe', 'probe stage (per draw)', 'fine-tuned',
                                                                 'fine-tuned from stage (per draw)'])
            + f"\n\nSelf-supervised >= supervised under our recipe: {'yes' if holds else 'no'}.\n")
    cmd = command('bench_rotnet_seed.py', a)
    text = (f"## RotNet on MNIST: the lecture's protocol and ours\n\nMachine: {machine(load0, a.threads)}.\n\n"
            f"Command: `{cmd}` ({(time.perf_counter() - t0)/60:.0f} min for the cells run this time; cells cached in `{a.cells}`)\n\n"
            f"Data: the lecture pretrained on 10,000 unlabelled digits; the sample has 5,000, so the pretext uses its 4,000 training "
            f"digits and the 1,000 test digits are only tested on. Downstream: 100 labels per class (1,000) drawn from the 4,000 "
            f"(draws {a.seeds}). The lecture reported 81.00 % (RotNet) against 78.67 % (supervised).\n\n" + '\n'.join(sections))
    write_text_atomic(a.out, text)
    print(text)


if __name__ == '__main__': main()
