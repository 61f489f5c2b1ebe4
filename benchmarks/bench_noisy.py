"""Noisy-label benchmark: test accuracy of (a) training on noisy labels, (b) k-fold soft labels + SoftLabelCB, (c) PLC.

MNIST sample (4,000 train / 1,000 clean test), 30 % symmetric noise on the train labels (`add_label_noise`), the same
small CNN, epochs, learning rate and one-cycle schedule for every run. Usage:
    python benchmarks/bench_noisy.py [--epochs 10] [--seeds 0 1] [--out benchmarks/results/noisy.md]
Out-of-fold runs are cached (resumable) under --work.
"""
import argparse, json, os, platform, time
from pathlib import Path
import numpy as np, pandas as pd, torch, torch.nn as nn
from fastai.learner import Learner
import fastai.callback.progress, fastai.callback.schedule  # no_bar, fit_one_cycle
from fastai.layers import ConvLayer
from fastai.metrics import accuracy
from PIL import Image
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import ColReader, ColSplitter, Normalize
from fastai.vision.data import ImageBlock
from fastai.vision.core import PILImageBW
from self_supervised_fa.data import load_sample_df, add_label_noise, get_sample_data, CLASSES, SAMPLE_STATS
from self_supervised_fa.pseudo_label import kfold_pseudo_labels, write_csv_atomic
from self_supervised_fa.soft_label import SoftLabelCB, SoftTargetCrossEntropy, soft_accuracy
from self_supervised_fa.plc import PLCCallback

def small_cnn(n_out=10):
    return nn.Sequential(ConvLayer(1, 16), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2),
                         ConvLayer(64, 64, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_out))

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

def make_learner(trn, val, cbs=None, bs=64):
    dls = mem_dls(trn, val, bs=bs)
    return Learner(dls, small_cnn(), loss_func=SoftTargetCrossEntropy(), metrics=soft_accuracy, cbs=cbs)

def train(learn, epochs, lr):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return learn

def test_acc(learn):
    with learn.no_bar(): return float(learn.validate()[1])

def run(seed, a, work):
    torch.manual_seed(seed); np.random.seed(seed)
    trn = add_label_noise(load_sample_df('train'), a.noise, seed=seed)
    tst = load_sample_df('test')
    res, t = {'seed': seed}, time.time()
    if 'clean' in a.methods:
        torch.manual_seed(seed)
        res['clean'] = test_acc(train(make_learner(trn.assign(label=trn.label_clean), tst), a.epochs, a.lr))
    torch.manual_seed(seed)
    res['noisy'] = test_acc(train(make_learner(trn, tst), a.epochs, a.lr)); res['t_noisy'] = time.time() - t
    if 'soft' in a.methods:
        t = time.time(); torch.manual_seed(seed)
        oof = kfold_pseudo_labels(trn, work/f'oof_seed{seed}_e{a.epochs}', n_folds=a.folds, learner_fn=make_learner,
                                  fit_fn=lambda l: train(l, a.epochs, a.lr), seed=seed)
        res['oof_acc_vs_clean'] = float((oof.pred.values == trn.label_clean.values).mean())
        torch.manual_seed(seed)
        learn = train(make_learner(trn, tst, cbs=SoftLabelCB(oof, w=a.w)), a.epochs, a.lr)
        res['soft'] = test_acc(learn); res['t_soft'] = time.time() - t
    if 'plc' in a.methods:
        t = time.time(); torch.manual_seed(seed)
        cb = PLCCallback(warmup=a.warmup, theta=a.theta, step=a.step)
        learn = train(make_learner(trn, tst, cbs=cb), a.epochs, a.lr)
        res['plc'] = test_acc(learn); res['t_plc'] = time.time() - t
        items = learn.dls.train.items.reset_index(drop=True)
        lab = np.array(list(learn.dls.vocab))[cb.labels.cpu().numpy()]
        res['plc_label_acc_before'] = float((items.label == items.label_clean).mean())
        res['plc_label_acc_after'] = float((lab == items.label_clean.values).mean())
        res['plc_flips'] = len(cb.changes)
    print(json.dumps(res), flush=True)
    return res

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--epochs', type=int, default=8); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--noise', type=float, default=0.3); p.add_argument('--folds', type=int, default=4)
    p.add_argument('--w', type=float, default=0.3); p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--theta', type=float, default=0.6); p.add_argument('--step', type=float, default=0.1)
    p.add_argument('--seeds', type=int, nargs='+', default=[0]); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--methods', nargs='+', default=['clean', 'soft', 'plc'])
    p.add_argument('--work', default=os.path.expanduser('~/.cache/self_supervised_fa/bench_noisy'))
    p.add_argument('--out', default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    rows = [run(s, a, work) for s in a.seeds]
    df = pd.DataFrame(rows)
    if a.out:
        cols = [c for c in ['clean', 'noisy', 'soft', 'plc'] if c in df]
        names = {'clean': 'clean labels (reference)', 'noisy': '(a) noisy labels', 'soft': '(b) k-fold soft labels + SoftLabelCB',
                 'plc': '(c) progressive label correction'}
        lines = [f"Test accuracy on the 1,000 clean test digits; train: 4,000 digits with {a.noise:.0%} symmetric label noise. "
                 f"Same small CNN (4 ConvLayers, 61 k params), {a.epochs} epochs one-cycle lr {a.lr}, bs 64, for every run; "
                 f"(b) {a.folds}-fold out-of-fold probabilities (same recipe per fold), w={a.w}; (c) warmup {a.warmup}, "
                 f"theta {a.theta} - {a.step}/epoch. Seeds {a.seeds} (noise and init).", '',
                 '| method | ' + ' | '.join(f'seed {s}' for s in a.seeds) + ' | mean | vs (a) |', '|---|' + '---|'*(len(a.seeds)+2)]
        for c in cols:
            m = df[c].mean()
            lines.append(f"| {names[c]} | " + ' | '.join(f'{v:.1%}' for v in df[c]) + f" | {m:.1%} | {(m - df.noisy.mean())*100:+.1f} pts |")
        extra = []
        if 'oof_acc_vs_clean' in df: extra.append(f"out-of-fold predictions agree with the clean labels on {df.oof_acc_vs_clean.mean():.1%} of train items")
        if 'plc_label_acc_after' in df: extra.append(f"PLC raised train-label accuracy from {df.plc_label_acc_before.mean():.1%} to {df.plc_label_acc_after.mean():.1%} ({df.plc_flips.mean():.0f} flips)")
        lines += ['', '; '.join(extra) + '.', '',
                  f"Machine: 2-core CPU (shared), 24 GiB, Python {platform.python_version()}, torch {torch.__version__}, no GPU. "
                  f"Command: `python benchmarks/bench_noisy.py --epochs {a.epochs} --w {a.w} --warmup {a.warmup} --theta {a.theta} --seeds {' '.join(map(str, a.seeds))} --methods {' '.join(a.methods)} --out {a.out}`"]
        Path(a.out).write_text('\n'.join(lines) + '\n'); print('\n'.join(lines))
