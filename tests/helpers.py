"Shared test helpers: CPU bf16 autocast for fit (fastai's MixedPrecision autocasts on CUDA only), small sample loaders"
import torch
from fastai.callback.core import Callback


class CPUBf16Callback(Callback):
    "Run the forward pass and the loss under `torch.autocast('cpu', torch.bfloat16)`, as `MixedPrecision` does on a GPU"
    order = 10   # where fastai's MixedPrecision sits: after the batch-replacing callbacks (8)
    def before_batch(self):
        self.ctx = torch.autocast('cpu', torch.bfloat16); self.ctx.__enter__()
    def after_loss(self): self.ctx.__exit__(None, None, None)
    def after_cancel_batch(self):
        if torch.is_autocast_enabled('cpu'): self.ctx.__exit__(None, None, None)


def grad_agreement(g32, g16):
    "(cosine similarity, relative norm difference) of two gradients, flattened"
    a, b = torch.cat([g.flatten().double() for g in g32]), torch.cat([g.flatten().double() for g in g16])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float((a - b).norm() / a.norm())


def fit_and_probe(model, cb, n_in:int=1, epochs:int=4, lr:float=3e-3, n_per_class:int=16, bs:int=32, seed:int=0,
                  project=lambda model, feats: model.projector(feats)):
    """`fit_one_cycle` a siamese `model` with callback `cb` on `n_per_class` sample digits per class; then the train loss per
    epoch, the kNN top-1 (10 bank + 10 query images per class) of the trained and of the initial (random) encoder, and
    the mean per-dimension std of the L2-normalised `project`ions of the query images' embeddings (0 when collapsed;
    about 1/sqrt(dim) when spread over the sphere: the collapse measure of SimSiam, section 4.1)"""
    import copy, torch.nn.functional as F
    from fastai.learner import Learner
    import fastai.callback.schedule, fastai.callback.progress
    from self_supervised_fa.data.sample import sample_dls, load_sample_df, subsample_per_class
    from self_supervised_fa.evaluate.embeddings import get_embeddings
    from self_supervised_fa.evaluate.probes import knn_accuracy
    dls = sample_dls(n_per_class=n_per_class, n_in=n_in, valid_df=load_sample_df('test').iloc[:32], bs=bs, seed=seed)
    probe = sample_dls(n_per_class=10, n_in=n_in, valid_df=subsample_per_class(load_sample_df('test'), 10, seed), bs=100,
                       shuffle=False, seed=seed)
    def knn(enc):
        (trf, trl), (tef, tel) = get_embeddings(enc, probe.train, progress=False), get_embeddings(enc, probe.valid, progress=False)
        return knn_accuracy(trf, trl, tef, tel, k=10, topk=(1,))['top1'], tef
    knn0, _ = knn(copy.deepcopy(model.encoder))
    learn = Learner(dls, model, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    knn1, emb = knn(model.encoder)
    with torch.no_grad(): z = F.normalize(project(model.eval(), emb).float(), dim=1)
    return dict(loss=[round(v[0], 4) for v in learn.recorder.values], knn=knn1, knn_random=knn0, std=z.std(0).mean().item(),
                dim=z.shape[1], learn=learn)
