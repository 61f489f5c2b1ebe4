"""Cases for tests/test_dist.py: each `case_*()` runs a loss on this process's slice of a fixed global batch (through a
tiny DDP-wrapped network when `torch.distributed` is initialised) and returns numpy arrays: the loss, its mean over the
processes and the parameter gradients after DDP's averaging. Run as a script, it is one of the test's worker processes:
`python tests/dist_cases.py RANK WORLD PORT OUTDIR CASE[,CASE...]` writes OUTDIR/CASE_RANK.npz"""
import os, sys
import numpy as np, torch, torch.nn.functional as F
from torch import nn
from self_supervised_fa.core.dist import rank, world_size, all_reduce_mean

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
    from self_supervised_fa.siamese.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.5)(*zs))

def case_ntxent_3views():
    from self_supervised_fa.siamese.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.2)(*zs), n_views=3)

def case_ntxent_uneven():
    "Slices of 5 and 3 images: the loss is weighted by the slice, so the mean over processes is still the global loss"
    from self_supervised_fa.siamese.simclr import NTXentLoss
    return run_views(lambda zs: NTXentLoss(0.5)(*zs), sizes=[5, 3] if world_size() == 2 else None)

def case_barlow_twins():
    "Global statistics: the same loss in every process, equal to the single-process loss"
    from self_supervised_fa.siamese.barlow_twins import BarlowTwinsLoss
    return run_views(lambda zs: BarlowTwinsLoss(0.05)(*zs))

def case_vicreg():
    from self_supervised_fa.siamese.vicreg import VICRegLoss
    return run_views(lambda zs: VICRegLoss()(*zs))

def _keys(n_views=2, d_out=5):
    "A teacher's outputs on this process's slice (no gradient)"
    with torch.no_grad(): return Views(d_out=d_out, seed=3)(*[v[_slice()] for v in _data(n_views)])

def case_moco_v2():
    "Queue negatives; then the keys of every process are queued (twice: the queue of 12 wraps around)"
    from self_supervised_fa.siamese.moco import InfoNCELoss
    from self_supervised_fa.siamese.teacher import KeyQueue
    torch.manual_seed(2); queue, k, f = KeyQueue(12, 5).double(), _keys(), InfoNCELoss(0.2)
    res = run_views(lambda zs: (f(zs[0], k[1], queue.keys) + f(zs[1], k[0], queue.keys)) / 2)
    for key in k: queue.push(F.normalize(key, dim=1))
    return dict(res, queue=queue.keys.numpy(), ptr=queue.ptr.numpy())

def case_moco_v3():
    "The other keys of the global batch as negatives"
    from self_supervised_fa.siamese.moco import InfoNCELoss
    k, f = _keys(), InfoNCELoss(0.2)
    return run_views(lambda zs: 0.4 * (f(zs[0], k[1]) + f(zs[1], k[0])))

def case_swav():
    "Sinkhorn over the global batch; 2 global crops and 1 more crop"
    from self_supervised_fa.siamese.swav import SwAVLoss
    return run_views(lambda zs: SwAVLoss(0.1)(zs, n_global=2), n_views=3, d_out=6)

def case_swav_queue():
    "Sinkhorn over the global batch and a queue's scores (the same in every process); the global embeddings are queued"
    from self_supervised_fa.siamese.swav import SwAVLoss, SwAVQueue
    g = torch.Generator().manual_seed(4)
    qs = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    res = run_views(lambda zs: SwAVLoss(0.1)(zs, n_global=2, queue_scores=qs), n_views=3, d_out=6)
    torch.manual_seed(5); queue = SwAVQueue(2, 12, 5).double()
    queue.push([F.normalize(key, dim=1) for key in _keys()])
    return dict(res, queue=torch.stack(queue.keys).numpy(), count=queue.count.numpy())

def case_dino():
    "Student on 3 crops against the teacher on 2; then the centre is updated with the global batch's mean"
    from self_supervised_fa.siamese.dino import DINOLoss, DINOModel
    t, center = _keys(), torch.linspace(-0.1, 0.1, 5, dtype=torch.float64)[None]
    res = run_views(lambda zs: DINOLoss(0.1)(zs, t, center, 0.04), n_views=3)
    holder = nn.Module(); holder.register_buffer('center', center.clone())
    DINOModel.update_center(holder, t, 0.9)
    return dict(res, center=holder.center.numpy())

def case_byol():
    "A per-image loss: the local mean is already right under DDP's average (equal slices); checked all the same"
    from self_supervised_fa.siamese.byol import BYOLLoss
    k = _keys()
    return run_views(lambda zs: BYOLLoss()(zs, k))

def case_simsiam():
    from self_supervised_fa.siamese.simsiam import NegativeCosineLoss
    return run_views(lambda zs: NegativeCosineLoss()(zs, zs))

class _Encoder(nn.Module):
    "A tiny encoder with `embed`, inside a model with `.encoder` (the library's convention)"
    def __init__(self):
        super().__init__(); torch.manual_seed(6); self.lin = nn.Linear(6, 4)
    def embed(self, x):
        self.seen = getattr(self, 'seen', 0) + len(x)
        return self.lin(x)
    def forward(self, x): return self.lin(x).sum(1)   # not the features: embed must be found through the DDP wrapper

def case_embeddings():
    "get_embeddings of 11 and 7 items (batches of 4, not divisible by 2 processes) through a DDP-wrapped model, and the kNN monitor"
    from types import SimpleNamespace
    from fastai.data.load import DataLoader
    from fastai.data.core import DataLoaders
    from self_supervised_fa.evaluate.embeddings import get_embeddings
    from self_supervised_fa.evaluate.monitor import KNNMonitorCallback, _get_encoder
    g = torch.Generator().manual_seed(7)
    items = lambda n: [(torch.randn(6, generator=g), int(i % 3)) for i in range(n)]
    dls = DataLoaders(DataLoader(items(11), bs=4, shuffle=True, drop_last=True), DataLoader(items(7), bs=4))
    model = nn.Module(); model.encoder = _Encoder()
    if world_size() > 1: model = nn.parallel.DistributedDataParallel(model)
    feats, labels = get_embeddings(_get_encoder(model), dls.train, progress=False)
    res = dict(feats=feats.numpy(), labels=labels.numpy(), local_seen=np.array(_get_encoder(model).seen))
    valid = dls.valid
    if world_size() > 1:   # fastai's wrapper of a loader under DDP (never iterated: its index broadcast needs CUDA); needs accelerate
        try: from fastai.distributed import DistributedDL
        except (ImportError, NameError): DistributedDL = None
        if DistributedDL is not None: valid = DistributedDL(dls.valid, rank(), world_size())
    f2, l2 = get_embeddings(_get_encoder(model), valid, progress=False)
    cb = KNNMonitorCallback(dls, k=3); cb.learn = SimpleNamespace(model=model)
    cb.after_validate()
    return dict(res, valid_feats=f2.numpy(), valid_labels=l2.numpy(), knn=np.array(cb.value))

class SeededFoldLearner:
    "learner_fn for kfold_pseudo_labels: a tiny CNN seeded by its fold's items, so a fold trains the same in any process"
    def __init__(self): self.held = []
    def __call__(self, trn, val):
        from fastai.learner import Learner
        from fastai.torch_core import set_seed
        from self_supervised_fa.data.sample import sample_dls
        set_seed(int(val.index.min()))
        self.held.append(sorted(val.image_id))
        model = nn.Sequential(nn.Conv2d(1, 4, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        return Learner(sample_dls(trn, val, bs=16, seed=0), model)
    @staticmethod
    def fit(learn):
        import fastai.callback.progress
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)

def kfold_run(out_dir):
    "4 folds of 40 sample digits into `out_dir`: the table and the held-out items of the folds this process trained"
    from self_supervised_fa.data.sample import load_sample_df, subsample_per_class
    from self_supervised_fa.labels.pseudo_label import kfold_pseudo_labels, FoldLearner
    df, rec = subsample_per_class(load_sample_df('train'), 4), SeededFoldLearner()
    oof = kfold_pseudo_labels(df, out_dir, 4, progress=False, learner=FoldLearner(learner_fn=rec, fit_fn=rec.fit))
    return oof, rec.held

def case_kfold():
    "Parallel folds: each process trains 2 of the 4 folds into one shared folder; every process returns the whole table"
    d = os.path.join(os.environ['SSFA_DIST_OUT'], 'kfold')   # a fresh folder of this run
    oof, held = kfold_run(d)
    probs = oof[[c for c in oof.columns if c.startswith('prob_')]].to_numpy()
    return dict(probs=probs, fold=oof.fold.to_numpy(), local_folds=np.array(len(held)),
                local_held=np.array(sorted(str(i) for h in held for i in h)),
                oof_file=np.array(os.path.exists(os.path.join(d, 'oof.csv'))))


CASES = {k[5:]: v for k, v in globals().items() if k.startswith('case_')}


def main(rank_, world, port, outdir, names):
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank_, world_size=world)
    os.environ['SSFA_DIST_OUT'] = outdir
    try:
        for name in names:
            res = CASES[name]()
            tmp = os.path.join(outdir, f'{name}_{rank_}.tmp.npz')
            np.savez(tmp, **{k: np.asarray(v) for k, v in res.items()})
            os.replace(tmp, os.path.join(outdir, f'{name}_{rank_}.npz'))
    finally: dist.destroy_process_group()


if __name__ == '__main__':
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(','))
