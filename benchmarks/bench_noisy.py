"""Noisy-label benchmark: test accuracy of (a) training on noisy labels, (b) k-fold soft labels + SoftLabelCallback, (c) PLC.

MNIST sample (4,000 train / 1,000 clean test), 30 % symmetric noise on the train labels (`add_label_noise`), the same
small CNN, epochs, learning rate and one-cycle schedule for every run. Usage:
    python benchmarks/bench_noisy.py [--epochs 10] [--seeds 0 1] [--out benchmarks/results/noisy.md]
Out-of-fold runs are cached (resumable) under --work.
"""
import argparse, json, os, platform, re, time
from pathlib import Path
import numpy as np, pandas as pd, torch, torch.nn as nn
from fastai.learner import Learner
import fastai.callback.progress, fastai.callback.schedule  # no_bar, fit_one_cycle
from fastai.layers import ConvLayer
from fastai.metrics import accuracy
from fastai.callback.tracker import SaveModelCallback
from PIL import Image
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import ColReader, ColSplitter, Normalize
from fastai.vision.data import ImageBlock
from fastai.vision.core import PILImageBW
from self_supervised_fa.data.sample import load_sample_df, get_sample_data, CLASSES, SAMPLE_STATS
from self_supervised_fa.labels.noise import add_label_noise
from self_supervised_fa.labels.pseudo_label import kfold_pseudo_labels, FoldLearner
from self_supervised_fa.core.io import write_csv_atomic
from self_supervised_fa.labels.soft_label import SoftLabelCallback, SoftTargetCrossEntropy, soft_accuracy
from self_supervised_fa.labels.plc import PLCCallback
from bench_utils import write_text_atomic

def small_cnn(n_out=10, widths=(16, 32, 64, 64)):
    "4 fastai ConvLayers (the last three stride 2), average pool, linear: 61 k parameters with the default widths"
    chans = (1,) + tuple(widths)
    return nn.Sequential(*[ConvLayer(i, o, stride=1 if k == 0 else 2) for k, (i, o) in enumerate(zip(chans, chans[1:]))],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], n_out))

ARCHS = {'cnn61k': (16, 32, 64, 64), 'cnn240k': (32, 64, 128, 128)}

_IMGS = {}
def _image(r):
    "The sample's digits decoded once and kept in memory (the PNG decode dominates an epoch on a small CPU)"
    if r.image_id not in _IMGS: _IMGS[r.image_id] = np.array(Image.open(get_sample_data()/'images'/f'{r.image_id}.png'))
    return _IMGS[r.image_id]

def mem_dls(trn, val, bs=64):
    "Same DataBlock as `sample_dls` (grey digits, vocab 0..9, Normalize), images read from memory"
    df = pd.concat([trn.assign(is_valid=False), val.assign(is_valid=True)], ignore_index=True)
    return DataBlock(blocks=(ImageBlock(PILImageBW), CategoryBlock(vocab=CLASSES)), get_x=_image, get_y=ColReader('label'),
                     splitter=ColSplitter('is_valid'), batch_tfms=Normalize.from_stats(*SAMPLE_STATS)).dataloaders(df, bs=bs)

def make_learner(trn, val, cbs=None, bs=64, arch='cnn61k'):
    dls = mem_dls(trn, val, bs=bs)
    return Learner(dls, small_cnn(widths=ARCHS[arch]), loss_func=SoftTargetCrossEntropy(), metrics=soft_accuracy, cbs=cbs)

def train(learn, epochs, lr, select='last', work=None):
    "One-cycle training; select='best' keeps the epoch with the best accuracy on the learner's validation set"
    cbs = []
    if select == 'best':  # for fold models: their validation set is the held-out fold, with its given (noisy) labels
        learn.path = Path(work); cbs = [SaveModelCallback(monitor='soft_accuracy', fname='fold_best', with_opt=False)]
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=cbs)
    return learn

def test_acc(learn):
    with learn.no_bar(): return float(learn.validate()[1])

def sharpen(oof, t):
    "OOF probabilities raised to 1/t and renormalised (t < 1 sharpens, t = 1 leaves them as they are)"
    if t == 1: return oof
    cols = [c for c in oof if str(c).startswith('prob_')]
    p = oof[cols].to_numpy(np.float64) ** (1 / t)
    return oof.assign(**dict(zip(cols, (p / p.sum(1, keepdims=True)).T)))

def memorised(learn, trn):
    "Share of the noisy training items whose (wrong) given label the trained model reproduces on the training images"
    dl = learn.dls.test_dl(trn, with_labels=False)
    with learn.no_bar(): p, _ = learn.get_preds(dl=dl)
    pred = np.array(list(learn.dls.vocab))[p.argmax(1).numpy()].astype(int)
    noisy = trn.is_noisy.values
    return float((pred[noisy] == trn.label.values[noisy]).mean())

def cached(work, name, fn):
    "Result of one training, kept as json in the work folder (a killed benchmark resumes; variants reuse (a))"
    f = work/f'{name}.json'
    if f.exists(): return json.loads(f.read_text())
    t = time.time(); r = fn(); r['t'] = time.time() - t
    write_text_atomic(f, json.dumps(r))
    return r

def run(seed, a, work):
    trn = add_label_noise(load_sample_df('train'), a.noise, seed=seed)
    tst = load_sample_df('test')
    tag = f'seed{seed}_e{a.epochs}_lr{a.lr}_{a.arch}'
    res = {'seed': seed}
    def fit(trn_, cbs=None):
        torch.manual_seed(seed); np.random.seed(seed)
        return train(make_learner(trn_, tst, cbs=cbs, arch=a.arch), a.epochs, a.lr)
    if 'clean' in a.methods:
        res['clean'] = cached(work, f'clean_{tag}', lambda: {'acc': test_acc(fit(trn.assign(label=trn.label_clean)))})['acc']
    def noisy():
        learn = fit(trn)
        return {'acc': test_acc(learn), 'memorised': memorised(learn, trn)}
    r = cached(work, f'noisy_{tag}', noisy); res['noisy'], res['noisy_memorised'] = r['acc'], r['memorised']
    if 'soft' in a.methods:
        torch.manual_seed(seed)
        oof = kfold_pseudo_labels(trn, work/f'oof_{tag}_f{a.folds}_{a.fold_select}', n_folds=a.folds, seed=seed, learner=FoldLearner(learner_fn=lambda t, v: make_learner(t, v, arch=a.arch), fit_fn=lambda l: train(l, a.epochs, a.lr, a.fold_select, work)))
        res['oof_acc_vs_clean'] = float((oof.pred.values == trn.label_clean.values).mean())
        res['soft'] = cached(work, f'soft_{tag}_f{a.folds}_{a.fold_select}_w{a.w}_T{a.temp}',
                             lambda: {'acc': test_acc(fit(trn, SoftLabelCallback(sharpen(oof, a.temp), w=a.w)))})['acc']
    if 'plc' in a.methods:
        def plc():
            cb = PLCCallback(warmup=a.warmup, theta=a.theta, step=a.step, window=a.window)
            learn = fit(trn, cb)
            items = learn.dls.train.items.reset_index(drop=True)
            lab = np.array(list(learn.dls.vocab))[cb.labels.cpu().numpy()].astype(int)
            return {'acc': test_acc(learn), 'label_acc_before': float((items.label == items.label_clean).mean()),
                    'label_acc_after': float((lab == items.label_clean.values).mean()), 'flips': len(cb.changes)}
        r = cached(work, f'plc_{tag}_wu{a.warmup}_th{a.theta}_st{a.step}_win{a.window}', plc)
        res['plc'] = r['acc']; res.update({f'plc_{k}': v for k, v in r.items() if k not in ('acc', 't')})
    print(json.dumps(res), flush=True)
    return res

NAME = re.compile(r'(?P<method>noisy|clean|soft|plc)_seed(?P<seed>\d+)_e(?P<epochs>\d+)_lr(?P<lr>[^_]+)_(?P<arch>[^_]+)(?P<cfg>.*)\.json$')

def summarize(work, a, out):
    "Markdown table of every cached result for --epochs/--lr/--arch: one row per configuration, one column per seed"
    res = []
    for f in sorted(work.glob('*.json')):
        m = NAME.match(f.name)
        if m and int(m['epochs']) == a.epochs and float(m['lr']) == a.lr and m['arch'] == a.arch:
            res.append(dict(method=m['method'], seed=int(m['seed']), cfg=m['cfg'].strip('_'), **json.loads(f.read_text())))
    df = pd.DataFrame(res)
    seeds = sorted(df.seed.unique())
    base = df[df.method == 'noisy'].set_index('seed').acc
    order = {'clean': 0, 'noisy': 1, 'soft': 2, 'plc': 3}
    names = {'clean': 'clean labels (reference)', 'noisy': '(a) noisy labels', 'soft': '(b) OOF soft labels + SoftLabelCallback',
             'plc': '(c) PLC'}
    lines = ['| method | configuration | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean | mean vs (a), same seeds |',
             '|---|---|' + '---|' * (len(seeds) + 2)]
    for (meth, cfg), g in sorted(df.groupby(['method', 'cfg']), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        acc = g.set_index('seed').acc
        cells = [f'{acc[s]:.1%}' if s in acc else '–' for s in seeds]
        diff = (acc - base.reindex(acc.index)).mean() * 100
        lines.append(f"| {names[meth]} | {cfg or '–'} | " + ' | '.join(cells) + f" | {acc.mean():.1%} | {diff:+.1f} pts |")
    notes = []
    for s in seeds:
        r = df[(df.method == 'noisy') & (df.seed == s)]
        if len(r): notes.append(f"seed {s}: (a) reproduces its wrong given label on {r.memorised.iloc[0]:.0%} of the noisy training items")
        trn = add_label_noise(load_sample_df('train'), a.noise, seed=s)
        for d in sorted(work.glob(f'oof_seed{s}_e{a.epochs}_lr{a.lr}_{a.arch}_*')):
            if (d/'oof.csv').exists():
                oof = pd.read_csv(d/'oof.csv', dtype={'image_id': str}).set_index('image_id').loc[trn.image_id.astype(str)]
                notes.append(f"seed {s}, folds `{d.name.split('_')[-1]}`: OOF predictions agree with the clean labels on "
                             f"{(oof.pred.values == trn.label_clean.values).mean():.1%} of training items (given labels: "
                             f"{(trn.label == trn.label_clean).mean():.1%})")
        for _, r in df[(df.method == 'plc') & (df.seed == s)].iterrows():
            notes.append(f"seed {s}, PLC {r.cfg}: training-label accuracy {r.label_acc_before:.1%} -> {r.label_acc_after:.1%} ({r.flips:.0f} flips)")
    text = '\n'.join(lines) + '\n\n' + '\n'.join(f'- {n}' for n in notes) + '\n'
    out.write_text(text); print(text)

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--epochs', type=int, default=8); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--noise', type=float, default=0.3); p.add_argument('--folds', type=int, default=4)
    p.add_argument('--w', type=float, default=0.3); p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--theta', type=float, default=0.6); p.add_argument('--step', type=float, default=0.1)
    p.add_argument('--window', type=int, default=1); p.add_argument('--temp', type=float, default=1.0)
    p.add_argument('--arch', default='cnn61k', choices=list(ARCHS))
    p.add_argument('--fold-select', default='last', choices=['last', 'best'],
                   help="fold models: the last epoch (same protocol as (a)) or the epoch best on the held-out fold's given labels")
    p.add_argument('--seeds', type=int, nargs='+', default=[0]); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--methods', nargs='+', default=['clean', 'soft', 'plc'])
    p.add_argument('--work', default=os.path.expanduser('~/.cache/self_supervised_fa/bench_noisy'))
    p.add_argument('--out', default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    if a.methods != ['none']: [run(s, a, work) for s in a.seeds]
    if a.out: summarize(work, a, Path(a.out))
