"""Per-batch cost of SoftLabelCB's soft targets vs the seed's per-batch DataFrame look-up.

Seed approach (baseline, written here only): in `before_batch`, slice the DataLoader's private shuffled index list
(`dl._DataLoader__idxs`) for the current batch, `df.iloc[...]` the probability columns, build a tensor, blend.
SoftLabelCB: the item index travels with each item (an int appended in `create_item`, collated with the batch), and
`before_batch` gathers rows of a pre-aligned tensor. Its overhead = the callback's tensor work + the extra per-item
index work in the loader (keeping each index beside its item, one LongTensor per batch), measured separately.
Usage: python benchmarks/bench_soft_label_overhead.py [--bs 64] [--out benchmarks/results/soft_label_overhead.md]
"""
import argparse, platform, time, timeit
import numpy as np, pandas as pd, torch, torch.nn.functional as F
from fastai.data.load import DataLoader
from fastai.learner import Learner
from self_supervised_fa.data import load_sample_df, sample_dls
from self_supervised_fa.soft_label import SoftLabelCB, SoftTargetCrossEntropy, indexed_dl

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

def main(bs, w, repeats, out):
    torch.set_num_threads(1)
    trn = load_sample_df('train')
    dls = sample_dls(trn, bs=bs)
    probs = probs_for(trn)
    items = dls.train.items.reset_index(drop=True)
    table = probs.set_index('image_id').loc[items.image_id].reset_index()  # aligned with the dataset, as the seed kept it
    cols = [c for c in table if c.startswith('prob_')]
    learn = Learner(dls, torch.nn.Linear(1, 1), loss_func=SoftTargetCrossEntropy())
    cb = SoftLabelCB(probs, w=w); cb.learn = learn; cb.before_fit()

    seed_t, ours_t = [], []
    for _ in range(repeats):
        dl = cb.train_dl  # same shuffled loader for both, so both see the same batches
        for i, (x, y, idx) in enumerate(dl):
            t = clock(); a = seed_targets(dl, i, table, cols, y, w); seed_t.append(clock() - t)
            t = clock(); b = cb.targets(y.as_subclass(torch.Tensor).long(), idx); ours_t.append(clock() - t)  # = before_batch
            torch.testing.assert_close(a, b)  # the same targets
    # the loader side of SoftLabelCB: what `indexed_dl` adds to a DataLoader (an index kept beside each item, one
    # LongTensor per batch), measured on cheap items (ints) so the difference is not lost in image-decoding noise
    plain = DataLoader(list(range(len(trn))), bs=bs, shuffle=True, drop_last=True)
    withidx = indexed_dl(plain)
    epoch = lambda dl: sum(1 for _ in dl)
    tp, ti = [], []
    for _ in range(30):  # interleaved; the machine is shared
        tp.append(_t(lambda: epoch(plain))); ti.append(_t(lambda: epoch(withidx)))
    tp, ti = np.array(tp) / len(plain), np.array(ti) / len(plain)
    loader_med, loader_min = (np.median(ti) - np.median(tp)) * 1e6, (ti.min() - tp.min()) * 1e6
    st, ot = np.array(seed_t) * 1e6, np.array(ours_t) * 1e6
    s_med, s_min, o_med, o_min = np.median(st), st.min(), np.median(ot), ot.min()
    tot_med, tot_min = o_med + max(0., loader_med), o_min + max(0., loader_min)
    lines = [f"Per-batch cost of the soft targets, batch size {bs}, 4,000 training items, 10 classes, w={w}; {len(st)} batches "
             f"({repeats} shuffled epochs), identical targets checked batch by batch. Thread CPU time (`time.thread_time`), "
             f"median and best per batch: the machine is shared.", '',
             '| approach | median (µs) | best (µs) | ratio to seed (median / best) |', '|---|---|---|---|',
             f"| seed: `dl._DataLoader__idxs` + `df.iloc` look-up + blend | {s_med:.0f} | {s_min:.0f} | 1 |",
             f"| SoftLabelCB `before_batch` (two row gathers + add on pre-aligned tensors) | {o_med:.1f} | {o_min:.1f} | 1/{s_med/o_med:.0f} / 1/{s_min/o_min:.0f} |",
             f"| SoftLabelCB loader side (`indexed_dl`: index beside each item, one LongTensor per batch) | {loader_med:.1f} | {loader_min:.1f} | |",
             f"| **SoftLabelCB total** | {tot_med:.1f} | {tot_min:.1f} | **1/{s_med/tot_med:.0f} / 1/{s_min/tot_min:.0f}** (target ≤ 1/20) |", '',
             f"Machine: 2-core CPU (shared with other jobs; medians), 24 GiB, Python {platform.python_version()}, "
             f"torch {torch.__version__}, no GPU, 1 torch thread. Command: `python benchmarks/bench_soft_label_overhead.py --bs {bs}"
             f"{' --out ' + out if out else ''}`"]
    print('\n'.join(lines))
    if out: open(out, 'w').write('\n'.join(lines) + '\n')

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--bs', type=int, default=64); p.add_argument('--w', type=float, default=0.5)
    p.add_argument('--repeats', type=int, default=2); p.add_argument('--out', default=None)
    a = p.parse_args()
    main(a.bs, a.w, a.repeats, a.out)
