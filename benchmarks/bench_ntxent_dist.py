"""Gathered NT-Xent in 2 processes (gloo, CPU): time and peak memory per process of self_supervised_fa's NTXentLoss
(anchors local, keys gathered with `dist.gather`) vs lightly's NTXentLoss(gather_distributed=True), on the same
inputs, forward+backward; and both in 1 process on the global batch. Memory and timing as in bench_ntxent.py (resident
high-water mark with glibc mmap above 64 KiB; implementations interleaved, medians of `--reps`; each process 1 thread).

    python benchmarks/bench_ntxent_dist.py [--reps 7] [--out benchmarks/results/ntxent_dist.md]
"""
import os, sys, socket, subprocess, statistics, platform, argparse, json
from bench_utils import write_text_atomic
HERE = os.path.dirname(os.path.abspath(__file__))
SIZES, DIM, T = (256, 1024), 128, 0.5


def worker(rank, world, port, reps, out):
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    import torch, torch.distributed as dist
    sys.path.insert(0, HERE)
    from bench_ntxent import interleaved
    from self_supervised_fa.siamese.simclr import NTXentLoss
    from lightly.loss import NTXentLoss as LightlyNTXent
    torch.set_num_threads(1)
    if world > 1: dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    impls = {'self_supervised_fa': NTXentLoss(T), 'lightly': LightlyNTXent(temperature=T, gather_distributed=world > 1)}
    res = {}
    for b in SIZES:
        n = b // world   # each process's share of a global batch of b images
        torch.manual_seed(rank)
        z0, z1 = torch.randn(n, DIM, requires_grad=True), torch.randn(n, DIM, requires_grad=True)
        res[b] = interleaved(impls, z0, z1, reps)
    json.dump({str(k): v for k, v in res.items()}, open(f'{out}.{world}.{rank}.json', 'w'))
    if world > 1: dist.destroy_process_group()


def launch(world, reps, out):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536', 'OMP_NUM_THREADS': '1'}
    ps = [subprocess.Popen([sys.executable, __file__, '--worker', str(r), str(world), str(port), str(reps), out], env=env)
          for r in range(world)]
    assert all(p.wait() == 0 for p in ps)
    return [json.load(open(f'{out}.{world}.{r}.json')) for r in range(world)]


def main(reps, out):
    two, one = launch(2, reps, out), launch(1, reps, out)[0]
    md = [f"NT-Xent forward+backward with the global batch's negatives, 2 views, {DIM} dims, temperature {T}: 2 processes",
          f"(gloo, CPU, 1 thread each) with half the global batch each, and 1 process with all of it; medians of {reps} interleaved runs.",
          f"Machine: 2-core shared CPU, no GPU ({os.getloadavg()[0]:.1f} load average at the end), Python {platform.python_version()}.",
          "Peak memory per process: resident-set high-water mark during the call minus the resident set before it.",
          "Command: `python benchmarks/bench_ntxent_dist.py`", '',
          '| global batch | processes | implementation | time (ms, rank 0) | peak memory (MiB, max over ranks) | time / lightly | memory / lightly |',
          '|---|---:|---|---:|---:|---:|---:|']
    for b in SIZES:
        for w, rs in ((2, two), (1, [one])):
            med = {k: (rs[0][str(b)][k][0], max(r[str(b)][k][1] for r in rs)) for k in rs[0][str(b)]}
            for k, (dt, mem) in med.items():
                md.append(f"| 2x{b} | {w} | {k} | {dt * 1e3:.1f} | {mem / 2**20:.1f} | {dt / med['lightly'][0]:.2f} | "
                          f"{mem / max(med['lightly'][1], 1):.2f} |")
    write_text_atomic(out, '\n'.join(md) + '\n')
    for f in os.listdir(os.path.dirname(out) or '.'):
        if f.startswith(os.path.basename(out) + '.') and f.endswith('.json'): os.remove(os.path.join(os.path.dirname(out) or '.', f))
    print('\n'.join(md))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--worker']: worker(*map(int, sys.argv[2:6]), sys.argv[6]); sys.exit()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=7); p.add_argument('--out', default='benchmarks/results/ntxent_dist.md')
    a = p.parse_args(); main(a.reps, a.out)
