"""NT-Xent forward+backward: time and peak memory of self_supervised_fa's NTXentLoss vs lightly's NTXentLoss and a
masking implementation (the seed's approach: N x N torch.eye / one-hot masks, positives and negatives indexed out).

Peak memory (CPU): the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before each
call) minus the resident set before the call. glibc is told to serve every allocation above 64 KiB with mmap
(MALLOC_MMAP_THRESHOLD_, the script re-executes itself with it), so freed tensors leave the resident set at once and
the high-water mark is the peak of live tensor bytes (plus a little allocator noise).
Timings: implementations interleaved in one process, `--reps` rounds, medians reported (the CPU is shared).

    python benchmarks/bench_ntxent.py [--reps 7] [--threads 1] [--out benchmarks/results/ntxent.md]
"""
import os, sys, gc, time, argparse, platform, statistics
if os.environ.get('MALLOC_MMAP_THRESHOLD_') != '65536':
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    os.execv(sys.executable, [sys.executable] + sys.argv)
import torch, torch.nn.functional as F
from self_supervised_fa.siamese.simclr import NTXentLoss
from bench_utils import write_text_atomic


def masking_ntxent(z0, z1, t=0.5):
    "The seed's approach (as in many SimCLR repos): one-hot label matrix and torch.eye mask, index positives/negatives out"
    b = len(z0)
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    labels = torch.cat([torch.arange(b)] * 2)
    labels = (labels[:, None] == labels[None, :]).float()
    sim = z @ z.T
    mask = torch.eye(2 * b, dtype=torch.bool)
    labels = labels[~mask].view(2 * b, -1)
    sim = sim[~mask].view(2 * b, -1)
    pos = sim[labels.bool()].view(2 * b, -1)
    neg = sim[~labels.bool()].view(2 * b, -1)
    logits = torch.cat([pos, neg], 1) / t
    return F.cross_entropy(logits, torch.zeros(2 * b, dtype=torch.long))


def _status():
    d = {}
    for l in open('/proc/self/status'):
        k, v = l.split(':', 1)
        if k in ('VmRSS', 'VmHWM'): d[k] = int(v.split()[0]) * 1024
    return d


def run_once(f, z0, z1):
    gc.collect(); z0.grad = z1.grad = None
    before = _status()['VmRSS']
    with open('/proc/self/clear_refs', 'w') as fh: fh.write('5')   # reset the high-water mark
    t = time.perf_counter(); f(z0, z1).backward(); dt = time.perf_counter() - t
    return dt, _status()['VmHWM'] - before


def interleaved(impls:dict, z0, z1, reps:int) -> dict:
    "{name: (median seconds, median peak bytes)} of forward+backward of every loss in `impls`, run in turns after a warm-up"
    res = {k: ([], []) for k in impls}
    for k, f in impls.items(): run_once(f, z0, z1)                   # warm-up
    for _ in range(reps):
        for k, f in impls.items():
            dt, mem = run_once(f, z0, z1); res[k][0].append(dt); res[k][1].append(mem)
    return {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in res.items()}


def main(reps=7, out='benchmarks/results/ntxent.md', sizes=(256, 1024, 2048), dim=128, t=0.5, threads=1):
    torch.set_num_threads(threads)  # 1: OpenMP barriers make multi-threaded timings erratic on a shared CPU
    impls = {'self_supervised_fa': NTXentLoss(t), 'masking (seed)': lambda a, b: masking_ntxent(a, b, t)}
    try:
        from lightly.loss import NTXentLoss as LightlyNTXent
        impls['lightly'] = LightlyNTXent(temperature=t)
    except ImportError: print('lightly not installed: pip install lightly (bench extra)')
    rows = []
    for b in sizes:
        torch.manual_seed(0)
        z0, z1 = torch.randn(b, dim, requires_grad=True), torch.randn(b, dim, requires_grad=True)
        med = interleaved(impls, z0, z1, reps)
        for k, (dt, mem) in med.items():
            rows.append((f'2x{b}', k, dt * 1e3, mem / 2**20,
                         dt / med['lightly'][0] if 'lightly' in med else float('nan'),
                         mem / med['masking (seed)'][1]))
            print(*rows[-1], flush=True)
    md = [f"NT-Xent forward+backward, embeddings of {dim} dims, temperature {t}; medians of {reps} interleaved runs.",
          f"{threads} torch thread(s). Machine: 2-core CPU, 24 GiB ({os.getloadavg()[0]:.1f} load average at the end), Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, no GPU.",
          "Peak memory: resident-set high-water mark during the call minus the resident set before it, with glibc serving",
          "allocations > 64 KiB by mmap (so it tracks live tensor bytes). Command: `python benchmarks/bench_ntxent.py`", '',
          '| views x batch | implementation | time (ms) | peak memory (MiB) | time / lightly | memory / masking |',
          '|---|---|---:|---:|---:|---:|']
    md += [f'| {a} | {k} | {dt:.1f} | {m:.1f} | {rt:.2f} | {rm:.2f} |' for a, k, dt, m, rt, rm in rows]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_text_atomic(out, '\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=7); p.add_argument('--out', default='benchmarks/results/ntxent.md')
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args(); main(a.reps, a.out, threads=a.threads)
