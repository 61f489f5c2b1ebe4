"""Continuing self-supervised training from weights made on another domain (issue 25): the guard against no guard.

The start is made honestly, with no ImageNet weights offline: SimCLR on the 4,000 training digits of the MNIST sample
(`--start-epochs`), exported to plain timm weights (`export_timm`) so the runs below start from a file as a user's would.
The target domain is scikit-learn's 8x8 digits (1,797 scans of another population and pen), upscaled to 28 px: a
stratified 60 % pool (the folder the runs pretrain on; its labels feed only the kNN monitor) and a 40 % test set.
For each seed, through the library's own workflow (`pretrain_folder`, as `ssfa pretrain --init` runs it), the same
`--epochs` of SimCLR on the pool:
- continued without the guard (`guard=False`: random heads, the full learning rate from the first step, the last epoch kept);
- continued with the guard (`ContinueCallback`: heads warm up on the frozen body, body at 0.1x, the best epoch kept);
- the same guard with the body at the heads' rate after the warm-up (`body_lr=1`);
- SSL from scratch (random init, same epochs);
then `label_efficiency` of the start, the three and a from-scratch twin (supervised fine-tuning from random weights) on
the test set: kNN, linear probe and fine-tuning at `--budgets` labels per class.

    python benchmarks/bench_continue.py [--epochs 20] [--seeds 0,1,2] [--start-epochs 30] [--threads 2]

Resumable: each run and evaluation is a cell of `--cells`; encoders go to `--cache`. Writes `--out` (markdown), a CSV
and a PNG of the monitor curves beside it.
"""
import argparse, json, shutil, sys, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from PIL import Image
from bench_utils import add_common_args, start, command, machine, md_table, write_text_atomic
from self_supervised_fa.app.options import FitOptions, FolderOptions
from self_supervised_fa.app.workflow import pretrain_folder
from self_supervised_fa.data.sample import get_sample_data
from self_supervised_fa.data.loading import folder_dls
from self_supervised_fa.encoders.files import load_encoder
from self_supervised_fa.encoders.export import export_timm
from self_supervised_fa.evaluate.label_efficiency import label_efficiency
from self_supervised_fa.core.io import write_csv_atomic
from self_supervised_fa.core.figures import save_figure

ARMS = {'guard': dict(guard=True), 'no_guard': dict(guard=False), 'ssl_scratch': {},
        'guard_lr1': dict(guard=True, body_lr=1.0)}   # the guard's warm-up and best-epoch choice without the lower body rate
FIRST = ('guard', 'no_guard', 'ssl_scratch')          # the arms of the first evaluation cell (with the from-scratch twin)
NAMES = {'start': 'start weights (SimCLR on MNIST)', 'no_guard': 'continued, no guard', 'guard': 'continued, guard (body at 0.1x)',
         'guard_lr1': 'continued, guard (body at 1x)', 'ssl_scratch': 'SSL from scratch, same epochs',
         'from scratch': 'supervised from scratch'}


def sklearn_digits_folder(root:Path, seed:int=0):
    "scikit-learn's 8x8 digits as 28-px PNGs: `root/pool` (train.csv + images/, 60 %) and the test items (40 %), stratified"
    from sklearn.datasets import load_digits
    d = load_digits()
    ims = root/'images'; ims.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (x, y) in enumerate(zip(d.images, d.target)):
        fn = ims/f'd{i:04d}.png'
        if not fn.exists(): Image.fromarray((x * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR).save(fn)
        rows.append(dict(image_id=f'd{i:04d}', fname=str(fn), label=str(y)))
    from sklearn.model_selection import train_test_split
    items = pd.DataFrame(rows)
    _, test = train_test_split(items.index, test_size=0.4, stratify=items.label, random_state=seed)
    items['is_valid'] = items.index.isin(test)
    pool = root/'pool'
    if not pool.exists():
        (pool/'images').mkdir(parents=True)
        for r in items[~items.is_valid].itertuples(): shutil.copy(r.fname, pool/'images'/Path(r.fname).name)
        items[~items.is_valid][['image_id', 'label']].to_csv(pool/'train.csv', index=False)
    return pool, items


def make_start(a, cache:Path) -> Path:
    "SimCLR on the MNIST sample's training digits, exported as plain timm weights: the 'pretrained' start"
    out = cache/f'start_{a.arch}_{a.start_epochs}'
    if not (out/'timm'/'model.safetensors').exists():
        r = pretrain_folder(get_sample_data(), out, 'simclr', a.arch, fit=FitOptions(epochs=a.start_epochs, seed=0, bs=a.bs, resume=True),
                            folder=FolderOptions(size=28, n_in=1, progress=False))
        export_timm(r['encoder'], out/'timm')
    return out/'timm'/'model.safetensors'


def run_arm(arm, pool, start_w, seed, a, cache):
    "One pretraining run on the pool: its kNN monitor per epoch (and at the start), CPU seconds, the encoder file"
    out = cache/f'{arm}_s{seed}'
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r = pretrain_folder(pool, out, 'simclr', a.arch, None if arm == 'ssl_scratch' else str(start_w),
                            fit=FitOptions(epochs=a.epochs, seed=seed, bs=a.bs, overwrite=True),
                            folder=FolderOptions(size=28, n_in=1, progress=False), **ARMS[arm])
    mon = next(c for c in r['learn'].cbs if type(c).__name__ == 'KNNMonitorCallback')
    rec = json.loads(json.dumps(r['history'].to_dict('list'), default=float))
    return dict(encoder=str(r['encoder']), knn_start=mon.start, knn=rec['knn_top1'], cpu_s=time.process_time() - c0,
                wall_s=time.perf_counter() - t0, stats=r['settings']['stats'])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_args(p, 'continue')
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--start-epochs', type=int, default=30)
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--budgets', default='10,100')
    p.add_argument('--bs', type=int, default=64)
    a = p.parse_args()
    load0, t0, cells = start(a)
    cache = Path(a.cache); cache.mkdir(parents=True, exist_ok=True)
    seeds, budgets = [int(s) for s in a.seeds.split(',')], [int(b) for b in a.budgets.split(',')]
    start_w = make_start(a, cache)
    pool, items = sklearn_digits_folder(cache/'sklearn_digits')
    rows, runs = [], {}
    for s in seeds:
        for arm in ARMS:
            key = f'{arm}/s{s}/e{a.epochs}'
            if cells.get(key) is None:
                print(f'run {key}', flush=True); cells.put(key, run_arm(arm, pool, start_w, s, a, cache))
            runs[(arm, s)] = cells.get(key)
        key = f'eval/s{s}/e{a.epochs}/b{a.budgets}'
        if cells.get(key) is None:
            print(f'evaluate {key}', flush=True)
            stats = runs[('guard', s)]['stats']
            dls = folder_dls(items, 28, 1, 64, stats, sorted(items.label.unique()), num_workers=0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                encs = {'start': load_encoder(start_w, arch=a.arch, n_in=1), **{arm: load_encoder(runs[(arm, s)]['encoder']) for arm in FIRST}}
                df = label_efficiency(encs, dls, budgets=budgets, seed=s, progress=False)
            cells.put(key, df.to_dict('records'))
        rows += [dict(r, seed=s) for r in cells.get(key)]
        key2 = f'eval_more/s{s}/e{a.epochs}/b{a.budgets}'   # arms added later: the same dls, seed and label draws, no second twin
        if cells.get(key2) is None:
            print(f'evaluate {key2}', flush=True)
            dls = folder_dls(items, 28, 1, 64, runs[('guard', s)]['stats'], sorted(items.label.unique()), num_workers=0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                encs = {arm: load_encoder(runs[(arm, s)]['encoder']) for arm in ARMS if arm not in FIRST}
                df = label_efficiency(encs, dls, budgets=budgets, seed=s, progress=False, scratch=False)
            cells.put(key2, df.to_dict('records'))
        rows += [dict(r, seed=s) for r in cells.get(key2)]
    df = pd.DataFrame(rows)
    write_csv_atomic(df, Path(a.out).with_suffix('.csv'))
    report(a, df, runs, seeds, budgets, load0, t0)


def report(a, df, runs, seeds, budgets, load0, t0):
    import matplotlib.pyplot as plt
    cols = [c for c in ('knn_top1', 'linear', 'finetune') if c in df]
    g = df.groupby(['encoder', 'labels'])[cols]
    mean, sd = g.mean(), g.std()
    table = []
    for enc in ['start', 'no_guard', 'guard', 'guard_lr1', 'ssl_scratch', 'from scratch']:
        row = {'encoder': NAMES[enc]}
        for b in budgets:
            for c in cols:
                m, v = mean.loc[(enc, b), c], sd.loc[(enc, b), c]
                row[f'{c}@{b}'] = f'{100*m:.1f} ± {100*v:.1f}'
        table.append(row)
    heads = [f'{c}@{b}' for b in budgets for c in cols]
    names = [f"{ {'knn_top1': 'kNN', 'linear': 'linear', 'finetune': 'fine-tune'}[c]} @{b}/class" for b in budgets for c in cols]
    # the monitor per epoch: the guard never below the start? the unguarded dip; epochs to SSL-from-scratch's final kNN
    mon = []
    for s in seeds:
        g_, n_, z_, g1 = (runs[(k, s)] for k in ('guard', 'no_guard', 'ssl_scratch', 'guard_lr1'))
        target = z_['knn'][-1]
        first = next((i + 1 for i, v in enumerate(g_['knn']) if v >= target), None)
        zfirst = next((i + 1 for i, v in enumerate(z_['knn']) if v >= target), None)
        mon.append(dict(seed=s, start=f"{100*g_['knn_start']:.1f}", guard_min=f"{100*min(g_['knn']):.1f}",
                        guard_kept=f"{100*max([g_['knn_start']] + g_['knn']):.1f}", no_guard_min=f"{100*min(n_['knn']):.1f}",
                        no_guard_first=f"{100*n_['knn'][0]:.1f}", no_guard_last=f"{100*n_['knn'][-1]:.1f}",
                        guard1_min=f"{100*min(g1['knn']):.1f}", guard1_kept=f"{100*max([g1['knn_start']] + g1['knn']):.1f}",
                        scratch_last=f"{100*target:.1f}", guard_reaches=first,
                        guard1_reaches=next((i + 1 for i, v in enumerate(g1['knn']) if v >= target), None), scratch_reaches=zfirst,
                        cpu=f"{g_['cpu_s']:.0f} / {g1['cpu_s']:.0f} / {n_['cpu_s']:.0f} / {z_['cpu_s']:.0f}"))
    fig, axs = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 3.4), squeeze=False)
    for ax, s in zip(axs[0], seeds):
        for k, c in (('guard', 'C0'), ('guard_lr1', 'C2'), ('no_guard', 'C3'), ('ssl_scratch', 'C7')):
            r = runs[(k, s)]
            ax.plot(range(0, len(r['knn']) + 1), [100 * r['knn_start']] + [100 * v for v in r['knn']], color=c, marker='.', label=NAMES[k])
        ax.axhline(100 * runs[('guard', s)]['knn_start'], color='k', lw=0.8, ls=':', label='start weights')
        ax.set_title(f'seed {s}'); ax.set_xlabel('epoch'); ax.set_ylabel('kNN monitor (%)'); ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(a.out).with_suffix('.png'), dpi=100)
    text = f"""# Continuing from pretrained weights: the guard against no guard (issue 25)

Start: SimCLR on the MNIST sample's 4,000 training digits, {a.arch}, {a.start_epochs} epochs, exported with `export_timm`
(plain timm weights). Target: scikit-learn's 8x8 digits upscaled to 28 px, a stratified 60 % pool for pretraining (its
labels feed only the kNN monitor) and a 40 % test set ({int(df.n_valid.iloc[0]) if 'n_valid' in df else 719} images), evaluated by
`label_efficiency`: kNN, linear probe and fine-tuning at {', '.join(map(str, budgets))} labels per class). Each run: {a.epochs}
epochs of SimCLR on the pool through `pretrain_folder` (what `ssfa pretrain --init` runs). Mean ± standard deviation over
seeds {', '.join(map(str, seeds))} (the seed of the continuation, of the label draw and of the fine-tuning).

Command: `{command('bench_continue.py', a)}`

Machine: {machine(load0, a.threads)}; {time.perf_counter() - t0:.0f} s for this invocation (cached cells excluded).
Precision: what `precision='auto'` chose when each cell ran, the same for every arm; the cells in the committed file
ran in bf16 autocast + channels-last (this CPU has AMX; they were made before `core.precision.cpu_bf16_conv_grads_ok`
turned 'auto' to float32 here, and no network in them sees a 1-px map: resnet10t's last stage gets 2x2 maps at 28 px).

## Test accuracy (%)

{md_table(table, ['encoder'] + heads, ['encoder'] + names)}

## The kNN monitor during continuation (%, on the pool's held-out fifth)

`guard_min`: the lowest epoch of the guarded run (the encoder it keeps is `guard_kept`, the best of the start and every
epoch; `guard1_*`: the same with the body at the heads' rate); `no_guard_first`/`min`/`last`: the unguarded run;
`*_reaches`: the first epoch whose monitor reaches SSL from scratch's last value. CPU seconds of the four runs (guard
0.1x / guard 1x / no guard / scratch), monitor included.

{md_table(mon, list(mon[0]))}

![monitor curves]({Path(a.out).with_suffix('.png').name})
"""
    write_text_atomic(Path(a.out), text)
    print(text)


if __name__ == '__main__': main()
