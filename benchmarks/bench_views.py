"""Issue 15, step 1: time per batch of 128 RGB images of our `ViewAugment` (op by op and whole, 2 views and 2+6
multi-crop) against self_supervised 1.0.4's pipeline with the same ops (crop 0.2-1, flip, jitter strength 0.6 i.e.
(0.48,0.48,0.48,0.12) @0.3 in both -- grayscale 0.3, blur 0.3) when it imports. 1 torch thread, interleaved
rounds, medians.  Usage: python benchmarks/bench_views.py [--sizes 32 96 224] [--rounds 5] [--out benchmarks/results/views.md]"""
import argparse, os, platform, statistics, time, torch, kornia.augmentation as K
from self_supervised_fa.augment import ViewAugment
from self_supervised_fa.multicrop import multi_crop_augs, local_size_for

KW = dict(crop_scale=(0.2, 1.), jitter_strength=0.6, jitter_p=0.3, grayscale_p=0.3, blur_p=0.3)

def ours_ops(size):
    "Our pipeline's ops one by one (as `ViewAugment.build` makes them) plus the whole view"
    va = ViewAugment(size, **KW); pipe = va.build(3, (size, size))
    return va, {type(op).__name__: op for op in pipe}

def theirs(size):
    try:
        from self_supervised.augmentations import get_batch_augs
    except Exception as e: return None, f'{type(e).__name__}: {e}'
    try:
        tfm = get_batch_augs(size, rotate=False, resize_scale=(0.2, 1.), jitter=True, bw=True, blur=True, jitter_s=.6, jitter_p=.3,
                             bw_p=.3, blur_p=.3, stats=None, cuda=False, xtra_tfms=[])
    except Exception as e: return None, f'{type(e).__name__}: {e}'
    return tfm, ''

def timeit(f, x):
    t = time.perf_counter(); f(x); return 1000 * (time.perf_counter() - t)

def main(sizes=(32, 96, 224), rounds=5, bs=128, out='benchmarks/results/views.md'):
    torch.set_num_threads(1); torch.manual_seed(0)
    rows, notes = [], []
    for size in sizes:
        x = torch.rand(bs, 3, size, size)
        va, ops = ours_ops(size)
        mc = multi_crop_augs(size, **{k: v for k, v in KW.items() if k != 'crop_scale'})
        th, why = theirs(size)
        if th is None: notes.append(f'self_supervised 1.0.4 at {size} px: {why}')
        fns = {f'ours op {k}': (lambda op: lambda x: op(x))(op) for k, op in ops.items()}
        fns['ours 2 views'] = lambda x: [va(x) for _ in range(2)]
        fns['ours 2+6 multi-crop'] = lambda x: [m(x) for m in mc]
        if th is not None: fns['self_supervised 1.0.4 2 views'] = lambda x: [th(x) for _ in range(2)]
        for f in fns.values(): f(x)   # warm up
        ts = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items(): ts[k].append(timeit(f, x))
        ref = statistics.median(ts['self_supervised 1.0.4 2 views']) if th is not None else None
        for k, v in ts.items():
            m = statistics.median(v)
            rows.append(f"| {size} | {k} | {m:.1f} | {'' if ref is None else f'{m/ref:.2f}'} |")
        print('\n'.join(rows[-len(ts):]), flush=True)
    txt = (f"# Views per batch ({bs} RGB images), issue 15\n\nMachine: {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores shared, load average {os.getloadavg()}; torch {torch.__version__}, 1 torch thread; "
           f"{rounds} interleaved rounds, medians.\nOps: crop 0.2-1, flip 0.5, jitter strength 0.6 @0.3, grayscale 0.3, blur 0.3.\n"
           f"Command: `PYTHONPATH=$PWD python benchmarks/bench_views.py --sizes {' '.join(map(str, sizes))} --rounds {rounds}`\n\n"
           "| px | pipeline | ms / batch | × self_supervised 2 views |\n|---|---|---|---|\n" + '\n'.join(rows) +
           ('\n\n' + '\n'.join(f'- {n}' for n in notes) if notes else '') + '\n')
    tmp = out + '.tmp'; open(tmp, 'w').write(txt); os.replace(tmp, out)

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--sizes', type=int, nargs='+', default=[32, 96, 224])
    p.add_argument('--rounds', type=int, default=5); p.add_argument('--out', default='benchmarks/results/views.md')
    a = p.parse_args(); main(a.sizes, a.rounds, out=a.out)
