"""Per-batch cost of SoftLabelCallback's soft targets vs the seed's per-batch DataFrame look-up.

Seed approach (baseline, written here only): in `before_batch`, slice the DataLoader's private shuffled index list
(`dl._DataLoader__idxs`) for the current batch, `df.iloc[...]` the probability columns, build a tensor, blend.
SoftLabelCallback: its training loader (`indexed_dl`: fastai's `DataLoader.new(dataset=IndexedDataset(ds))`) appends each
item's index to the item; `before_batch` gathers the batch's rows of the target table (blended once per fit), checking
the labels on an epoch's first batch. Its overhead = what the indexed loader adds per batch (the difference between a plain
loader and the indexed one over the same in-memory items with the sample DataLoaders' own `after_batch`, timed per epoch,
interleaved) + `before_batch`. The seed's look-up is timed right after the loader built each batch.
Usage: python benchmarks/bench_soft_label_overhead.py [--bs 64] [--out benchmarks/results/soft_label_overhead.md]
"""
import argparse, platform, time, timeit
import numpy as np, pandas as pd, torch, torch.nn.functional as F
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.torch_core import TensorImageBW
from fastai.vision.core import ToTensor
from self_supervised_fa.data.sample import load_sample_df, sample_dls
from self_supervised_fa.labels.soft_label import SoftLabelCallback, SoftTargetCrossEntropy, indexed_dl

def probs_for(df, seed=0):
    p = pd.DataFrame(np.random.default_rng(seed).dirichlet(np.ones(10), len(df)), columns=[f'prob_{c}' for c in range(10)])
    p.insert(0, 'image_id', df.image_id.values)
    return p

clock = time.thread_time  # CPU time of this thread: other jobs on the shared cores do not count

def _t(f):
    t = clock(); f(); return clock() - t

def seed_targets(dl, i, df, cols, y, w):
    "The seed's per-batch look-up through the DataLoader's private index list"
    idxs = dl._DataLoader__idxs[i*dl.bs:(i+1)*dl.bs]
    p = torch.tensor(df.iloc[idxs][cols].values, dtype=torch.float32)
    return w*F.one_hot(y, p.shape[1]).float() + (1 - w)*p

def main(bs, w, repeats, loader_reps, out, machine):
    torch.set_num_threads(1)
    trn = load_sample_df('train')
    dls = sample_dls(trn, bs=bs)
    probs = probs_for(trn)
    items = dls.train.items.reset_index(drop=True)
    table = probs.set_index('image_id').loc[items.image_id].reset_index()  # aligned with the dataset, as the seed kept it
    cols = [c for c in table if c.startswith('prob_')]
    learn = Learner(dls, torch.nn.Linear(1, 1), loss_func=SoftTargetCrossEntropy())
    cb = SoftLabelCallback(probs, w=w); cb.learn = learn; cb.before_fit()

    seed_t, bb_t = [], []
    for r in range(repeats):
        # the seed, timed right after the loader built each batch (caches as cold as in training), and SoftLabelCallback's
        # before_batch on the same batch: both give the same targets, checked batch by batch
        dl = cb.train_dl
        for i, (x, y, idx) in enumerate(dl):
            t = clock(); a = seed_targets(dl, i, table, cols, y, w); seed_t.append(clock() - t)
            learn.xb, learn.yb, learn.iter = (x,), (y, idx), i
            t = clock(); cb.before_batch(); bb_t.append(clock() - t)
            torch.testing.assert_close(a, learn.yb[0])
    # the loader side: what `indexed_dl` adds per batch, on items already in memory (decoding would drown the
    # difference): (image tensor, label) pairs through the sample DataLoaders' after_batch transforms, and bare ints
    mem = [(TensorImageBW(ToTensor()(dls.train_ds[i][0])), dls.train_ds[i][1]) for i in range(len(dls.train_ds))]
    loaders = {'images': DataLoader(mem, bs=bs, shuffle=True, drop_last=True, after_batch=dls.train.after_batch),
               'ints': DataLoader(list(range(len(trn))), bs=bs, shuffle=True, drop_last=True)}
    epoch = lambda dl: sum(1 for _ in dl)
    loader = {}
    for name, plain in loaders.items():
        withidx, tp, ti = indexed_dl(plain), [], []
        for _ in range(loader_reps):  # interleaved
            tp.append(_t(lambda: epoch(plain))); ti.append(_t(lambda: epoch(withidx)))
        tp, ti = np.array(tp) / len(plain), np.array(ti) / len(plain)
        loader[name] = ((np.median(ti) - np.median(tp)) * 1e6, (ti.min() - tp.min()) * 1e6, np.median(tp) * 1e6)
    loader_med, loader_min, _ = loader['images']
    st, bt = np.array(seed_t) * 1e6, np.array(bb_t) * 1e6
    s_med, s_min, o_med, o_min = np.median(st), st.min(), np.median(bt), bt.min()
    tot_med, tot_min = o_med + max(0., loader_med), o_min + max(0., loader_min)
    lines = [f"Per-batch cost of the soft targets, batch size {bs}, 4,000 training items, 10 classes, w={w}; {len(st)} batches "
             f"({repeats} shuffled epochs; each step timed right after the loader built the batch), identical targets checked batch by batch. Thread CPU time (`time.thread_time`), "
             f"median and best per batch.", '',
             '| approach | median (µs) | best (µs) | ratio to seed (median / best) |', '|---|---|---|---|',
             f"| seed: `dl._DataLoader__idxs` + `df.iloc` look-up + blend | {s_med:.0f} | {s_min:.0f} | 1 |",
             f"| SoftLabelCallback `before_batch` (gather of the batch's rows; label check on an epoch's first batch) | {o_med:.1f} | {o_min:.1f} | |",
             f"| SoftLabelCallback loader side: `indexed_dl` minus the plain loader, in-memory image batches | {loader_med:.1f} | {loader_min:.1f} | |",
             f"| (`indexed_dl` on bare-int items, for reference) | {loader['ints'][0]:.1f} | {loader['ints'][1]:.1f} | |",
             f"| **SoftLabelCallback total** (`before_batch` + loader side, image batches) | {tot_med:.1f} | {tot_min:.1f} | **1/{s_med/tot_med:.0f} / 1/{s_min/tot_min:.0f}** (target ≤ 1/20) |", '',
             f"For scale: a plain in-memory image batch costs {loader['images'][2]:.0f} µs of loader time (no decoding). "
             f"A negative loader difference (noise) is counted as 0 in the total.", '',
             f"Machine: 2-core CPU, 24 GiB, Python {platform.python_version()}, torch {torch.__version__}, no GPU, 1 torch thread; "
             f"{machine}. Command: `python benchmarks/bench_soft_label_overhead.py --bs {bs} --repeats {repeats} --loader-reps {loader_reps}"
             f"{' --out ' + out if out else ''}`"]
    print('\n'.join(lines))
    if out: open(out, 'w').write('\n'.join(lines) + '\n')

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--bs', type=int, default=64); p.add_argument('--w', type=float, default=0.5)
    p.add_argument('--repeats', type=int, default=4); p.add_argument('--loader-reps', type=int, default=40)
    p.add_argument('--out', default=None); p.add_argument('--machine', default='machine shared with other jobs')
    a = p.parse_args()
    main(a.bs, a.w, a.repeats, a.loader_reps, a.out, a.machine)
