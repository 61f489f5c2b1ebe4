"""Cases for tests/test_dist.py: each `case_*()` runs a loss on this process's slice of a fixed global batch (through a
tiny DDP-wrapped network when `torch.distributed` is initialised) and returns numpy arrays: the loss, its mean over the
processes and the parameter gradients after DDP's averaging. Run as a script, it is one of the test's worker processes:
`python tests/dist_cases.py RANK WORLD PORT OUTDIR CASE[,CASE...]` writes OUTDIR/CASE_RANK.npz"""
import os, sys
import numpy as np, torch, torch.nn.functional as F
from torch import nn
from self_supervised_fa.dist import rank, world_size, all_reduce_mean

B = 8   # global batch


class Views(nn.Module):
    "One forward for all views (as `SiameseModel` does): `net(cat(views))` split back per view"
    def __init__(self, d_in=6, d_out=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, d_out)).double()
    def forward(self, *views): return self.net(torch.cat(views)).split([len(v) for v in views])


def _slice(sizes=None):
    "This process's rows of the global batch: equal slices, or the given `sizes` per process"
    w, r = world_size(), rank()
    sizes = sizes or [B // w] * w
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


def _data(n_views, d_in=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d_in, generator=g, dtype=torch.float64) for _ in range(n_views)]


def run_views(loss_fn, n_views=2, sizes=None, d_out=5, **extra):
    "The loss of `loss_fn(outputs)` on this process's slice of the views, backward through DDP; arrays to compare"
    model = Views(d_out=d_out)
    if world_size() > 1: model = nn.parallel.DistributedDataParallel(model)
    sl = _slice(sizes)
    loss = loss_fn(model(*[v[sl] for v in _data(n_views)]))
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return dict(loss=loss.detach().numpy(), mean_loss=all_reduce_mean(loss.detach()).numpy(), grads=grads.numpy(), **extra)


def case_ntxent():
    from self_supervised_fa.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.5)(*zs))

def case_ntxent_3views():
    from self_supervised_fa.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.2)(*zs), n_views=3)

def case_ntxent_uneven():
    "Slices of 5 and 3 images: the loss is weighted by the slice, so the mean over processes is still the global loss"
    from self_supervised_fa.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.5)(*zs), sizes=[5, 3] if world_size() == 2 else None)


CASES = {k[5:]: v for k, v in globals().items() if k.startswith('case_')}


def main(rank_, world, port, outdir, names):
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank_, world_size=world)
    try:
        for name in names:
            res = CASES[name]()
            tmp = os.path.join(outdir, f'{name}_{rank_}.tmp.npz')
            np.savez(tmp, **{k: np.asarray(v) for k, v in res.items()})
            os.replace(tmp, os.path.join(outdir, f'{name}_{rank_}.npz'))
    finally: dist.destroy_process_group()


if __name__ == '__main__':
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(','))
