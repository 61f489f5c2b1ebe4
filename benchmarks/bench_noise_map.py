"""The label-budget x noise map: test accuracy of six recipes at 10 / 100 / all labels per class x 0 / 20 / 40 % symmetric
noise and 40 % asymmetric noise, on the MNIST sample. Buy more labels, or clean the ones we have?

Cells: a budget (labels per class, drawn by their clean label with `subsample_per_class`) and a noise (`add_label_noise`, or
`review.add_asymmetric_noise`: 40 % of the 2s, 3s, 5s, 6s, 7s flipped to 7, 8, 6, 5, 1), applied to the drawn labels.
Recipes, all on the same SimCLR resnet10t encoder (pretrained once on the 4,000 unlabelled training images, cached):
  scratch   the same network from random weights, fit_one_cycle(10, 2e-3)
  linear    logistic regression on the frozen SSL embeddings (`evaluate.linear_probe`)
  finetune  SSL encoder + head, fine_tune(10, 1e-3, freeze_epochs=0, lr_mult=1) (label_efficiency's defaults)
  soft      finetune with SoftLabelCallback(oof, w=0.3), oof from kfold_pseudo_labels (4 folds of the finetune recipe)
  plc       finetune with PLCCallback(warmup=3, theta=0.6, step=0.1, theta_min=0.2, window=3)
  review    finetune after dropping the top suspects of rank_suspects(oof, SSL embeddings), as many as the estimated noise
  relabel   the same top suspects relabelled to the suggested class instead of dropped
Every (cell, recipe) result is cached as JSON under --work: a re-run skips finished cells; the table is written from the cache.

    python benchmarks/bench_noise_map.py [--budgets 10 100 all] [--noises sym0 sym20 sym40 asym40] [--threads 2]
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from noise_common import (WORK, setup, cached, machine, write_atomic, splits, make_learner, fit, test_acc, embeddings,
                          oof_probs, md_table)
from self_supervised_fa.labels.noise import add_label_noise
from self_supervised_fa.data.sample import subsample_per_class
from self_supervised_fa.evaluate.probes import linear_probe
from self_supervised_fa.evaluate.label_efficiency import scratch_like
from self_supervised_fa.labels.plc import PLCCallback
from self_supervised_fa.labels.suspects import rank_suspects, KNNVote
from self_supervised_fa.labels.noise import add_asymmetric_noise
from self_supervised_fa.labels.soft_label import SoftLabelCallback

NOISES = {'sym0': ('symmetric', 0.0), 'sym20': ('symmetric', 0.2), 'sym40': ('symmetric', 0.4), 'asym40': ('asymmetric', 0.4)}
BUDGETS = {'10': 10, '100': 100, 'all': None}
METHODS = ['scratch', 'linear', 'finetune', 'soft', 'plc', 'review', 'relabel']
NAMES = {'scratch': 'from scratch', 'linear': 'SSL + linear probe', 'finetune': 'SSL + fine-tune',
         'soft': 'SSL + FT + soft labels', 'plc': 'SSL + FT + PLC', 'review': 'SSL + FT, top suspects dropped',
         'relabel': 'SSL + FT, top suspects relabelled'}
SOFT_W, PLC = 0.3, dict(warmup=3, theta=0.6, step=0.1, theta_min=0.2, window=3)


def cell_data(budget, noise, seed):
    kind, frac = NOISES[noise]
    trn = subsample_per_class(splits()[0], BUDGETS[budget], seed=seed)
    return (add_label_noise if kind == 'symmetric' else add_asymmetric_noise)(trn, frac, seed=seed)


def run_cell(budget, noise, seed, enc, emb, work, methods):
    trn = cell_data(budget, noise, seed)
    tag = f'b{budget}_{noise}_s{seed}'
    feats = lambda d: np.stack([emb[i] for i in d.image_id])
    oof = lambda: oof_probs(trn, enc, work/f'map_oof_{tag}', seed=seed)
    jobs = {
        'scratch': lambda: {'acc': test_acc(fit(make_learner(trn, scratch_like(enc, seed), seed=seed), pretrained=False))},
        'linear': lambda: {'acc': linear_probe(feats(trn), trn.label.values, feats(splits()[1]), splits()[1].label.values, seed=seed)},
        'finetune': lambda: {'acc': test_acc(fit(make_learner(trn, enc, seed=seed)))},
        'soft': lambda: soft(trn, enc, oof(), seed),
        'plc': lambda: plc(trn, enc, seed),
        'review': lambda: review(trn, enc, oof(), feats(trn), seed),
        'relabel': lambda: review(trn, enc, oof(), feats(trn), seed, relabel=True)}
    res = {}
    for m in methods:
        res[m] = cached(work/f'map_{tag}_{m}.json', jobs[m])
        print(json.dumps(dict(cell=tag, method=m, **res[m])), flush=True)
    return res


def soft(trn, enc, oof, seed):
    acc = test_acc(fit(make_learner(trn, enc, [SoftLabelCallback(oof, w=SOFT_W)], seed=seed)))
    pred = oof.set_index('image_id').loc[trn.image_id].pred.to_numpy().astype(int)
    return {'acc': acc, 'oof_acc_vs_clean': float((pred == trn.label_clean.to_numpy()).mean())}


def plc(trn, enc, seed):
    cb = PLCCallback(**PLC)
    learn = fit(make_learner(trn, enc, [cb], seed=seed))
    items = learn.dls.train.items.reset_index(drop=True)
    lab = np.array(list(learn.dls.vocab))[cb.labels.cpu().numpy()].astype(int)
    return {'acc': test_acc(learn), 'label_acc_before': float((items.label == items.label_clean).mean()),
            'label_acc_after': float((lab == items.label_clean.to_numpy()).mean()), 'flips': len(cb.changes)}


def review(trn, enc, oof, feats, seed, relabel=False):
    "Rank the suspects (OOF + kNN vote), then drop the top n (or relabel them to the suggestion), n = the estimated noise"
    t = rank_suspects(trn, oof, feats, vote=KNNVote(seed=seed, n_folds=min(10, len(trn) // 2)))
    n = int(round(t.attrs['noise_rate'] * len(trn)))
    top = t.iloc[:n]
    if relabel: new = trn.assign(label=trn.image_id.map(dict(zip(top.image_id, top.suggested))).fillna(trn.label).astype(int))
    else: new = trn[~trn.image_id.isin(set(top.image_id))]
    acc = test_acc(fit(make_learner(new, enc, seed=seed)))
    wrong = trn.set_index('image_id').is_noisy
    return {'acc': acc, 'noise_rate_est': t.attrs['noise_rate'], 'dropped': n,
            'dropped_precision': float(wrong.loc[list(top.image_id)].mean()) if n else float('nan'),
            'noise_left': float((new.label != new.label_clean).mean())}


def summarize(work, seed, out, png, threads, cmd):
    rows = []
    for b in BUDGETS:
        for nz in NOISES:
            r = dict(budget=b, noise=nz)
            for m in METHODS:
                f = work/f'map_b{b}_{nz}_s{seed}_{m}.json'
                if f.exists(): r[m] = json.loads(f.read_text())
            rows.append(r)
    acc = pd.DataFrame([{**{'labels per class': r['budget'], 'noise': r['noise']},
                         **{NAMES[m]: (f"{100 * r[m]['acc']:.1f}" if m in r else '–') for m in METHODS}} for r in rows])
    extra = pd.DataFrame([{'labels per class': r['budget'], 'noise': r['noise'],
                           'wrong labels': f"{100 * cell_data(r['budget'], r['noise'], seed).is_noisy.mean():.1f}",
                           'OOF agrees with clean': f"{100 * r['soft']['oof_acc_vs_clean']:.1f}" if 'soft' in r else '–',
                           'PLC label acc. before → after': (f"{100 * r['plc']['label_acc_before']:.1f} → {100 * r['plc']['label_acc_after']:.1f}"
                                                             if 'plc' in r else '–'),
                           'review: est. noise / top n / wrong among them / wrong left after drop, relabel': (
                               f"{100 * r['review']['noise_rate_est']:.1f} / {r['review']['dropped']} / {100 * r['review']['dropped_precision']:.0f} / "
                               f"{100 * r['review']['noise_left']:.1f}, " + (f"{100 * r['relabel']['noise_left']:.1f}" if 'relabel' in r else '–')
                               if 'review' in r else '–'),
                           'CPU s (scratch, FT, soft incl. folds, PLC, drop, relabel)': ', '.join(
                               f"{r[m]['seconds']:.0f}" for m in ('scratch', 'finetune', 'soft', 'plc', 'review', 'relabel') if m in r)}
                          for r in rows])
    heatmap(rows, png)
    text = (f"## Label budget × noise map (issue 14)\n\nMNIST sample: for each cell, `labels per class` training digits per class "
            f"(`subsample_per_class`, by their clean label; `all` = the 4,000), then their labels corrupted: `symN` = N % flipped to "
            f"another class uniformly (`add_label_noise`), `asym40` = 40 % of the 2s, 3s, 5s, 6s and 7s flipped to 7, 8, 6, 5 and 1 "
            f"(`review.add_asymmetric_noise`; 20 % of all labels). Test accuracy (%) on the 1,000 clean test digits, seed {seed}. "
            f"Every recipe uses the same SimCLR resnet10t encoder (pretrained once on the 4,000 unlabelled training images, 20 "
            f"epochs) or, for `from scratch`, the same network from random weights (`fit_one_cycle(10, 2e-3)`); fine-tuning is "
            f"`fine_tune(10, 1e-3, freeze_epochs=0, lr_mult=1)`, batch 32 (64 for all labels); soft labels: "
            f"`SoftLabelCallback(oof, w={SOFT_W})`, OOF from `kfold_pseudo_labels` with 4 folds of the fine-tuning recipe; PLC: "
            f"`PLCCallback({', '.join(f'{k}={v}' for k, v in PLC.items())})`; review: `rank_suspects(oof, embeddings)` (OOF + kNN "
            f"vote), its top n suspects (n = its estimated noise rate × items) dropped, or relabelled to the suggested class, "
            f"then fine-tuned.\n\n"
            f"Machine: {machine(threads)}.\n\nCommand: `{cmd}`\n\n{md_table(acc)}\n\n![noise map]({png.name})\n\n"
            f"Per cell: the share of wrong labels, how well the out-of-fold predictions recover the clean labels, PLC's "
            f"training-label accuracy, the review's estimate / number dropped / share of dropped that were wrong / wrong "
            f"labels left (%), and the CPU seconds per recipe.\n\n{md_table(extra)}\n")
    write_atomic(out, text); print(text)


def heatmap(rows, png):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, len(BUDGETS), figsize=(4.2 * len(BUDGETS), 4), sharey=True)
    for ax, b in zip(axs, BUDGETS):
        a = np.array([[next((r[m]['acc'] * 100 for r in rows if r['budget'] == b and r['noise'] == nz and m in r), np.nan)
                       for nz in NOISES] for m in METHODS])
        ax.imshow(a, vmin=50, vmax=100, cmap='viridis', aspect='auto')
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if not np.isnan(a[i, j]): ax.text(j, i, f'{a[i, j]:.1f}', ha='center', va='center', fontsize=9,
                                                   color='white' if a[i, j] < 80 else 'black')
        ax.set_xticks(range(len(NOISES)), list(NOISES)); ax.set_title(f'{b} labels per class')
        ax.set_yticks(range(len(METHODS)), [NAMES[m] for m in METHODS])
    fig.suptitle('Test accuracy (%) on the MNIST sample: label budget × label noise')
    fig.tight_layout()
    tmp = png.with_name(f'.{png.name}.tmp'); fig.savefig(tmp, format='png', dpi=110); tmp.replace(png)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--budgets', nargs='+', default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument('--noises', nargs='+', default=list(NOISES), choices=list(NOISES))
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS + ['none'])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--work', default=str(WORK))
    p.add_argument('--out', default='benchmarks/results/noise_map.md')
    a = p.parse_args()
    work = Path(a.work)
    if a.methods != ['none']:
        enc, _, emb = setup(work, a.threads)
        for b in a.budgets:
            for nz in a.noises: run_cell(b, nz, a.seed, enc, emb, work, a.methods)
    out = Path(a.out)
    cmd = f"python benchmarks/bench_noise_map.py --budgets {' '.join(a.budgets)} --noises {' '.join(a.noises)} --seed {a.seed} --threads {a.threads}"
    summarize(work, a.seed, out, out.with_suffix('.png'), a.threads, cmd)
