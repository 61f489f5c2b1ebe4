"Shared test helpers (no test file imports another): CPU bf16 autocast for fit, small sample loaders and networks, a pretext run"
import pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import set_seed
import fastai.callback.schedule, fastai.callback.progress  # noqa: F401 (fit_one_cycle, no_bar)
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.encoders.files import save_encoder
from self_supervised_fa.encoders.classifier import classifier_learner


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


PRECISIONS = pytest.mark.parametrize('precision', ['fp32', 'bf16'])


def skip_bf16_without_right_gradients(precision):
    "Skip a bf16 run whose network sees 1-px maps where this torch's bf16 convolution gradients are wrong (core.precision)"
    from self_supervised_fa.core.precision import cpu_bf16_conv_grads_ok
    if precision == 'bf16' and not cpu_bf16_conv_grads_ok():
        pytest.skip("this torch computes wrong bf16 gradients for stride-2 convolutions of 1-px maps on this CPU "
                    "(core.precision.cpu_bf16_conv_grads_ok); 'auto' stays in float32 here")


def tiny_dls(n_per_class=5, bs=16, **kwargs):
    "50 training digits, 64 validation digits: enough to see a pretext loss go down in seconds"
    set_seed(0)  # the DataLoaders' shuffling RNG is drawn when they are created
    return sample_dls(n_per_class=n_per_class, bs=bs, valid_df=load_sample_df('test').iloc[:64], **kwargs)


def pretrain_and_transfer(dls, model, cb, loss_func, tmp_path, cls_dls=None, epochs=2, lr=3e-3, metrics=None, precision='fp32'):
    "Train a pretext task with fit_one_cycle (`precision='bf16'`: under CPU bf16 autocast), check the (seeded) validation loss went down and the encoder transfers"
    set_seed(0)
    learn = Learner(dls, model, loss_func=loss_func, cbs=[cb] + ([CPUBf16Callback()] if precision == 'bf16' else []), metrics=metrics)
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        learn.fit_one_cycle(epochs, lr)
        after = learn.validate()
    assert after[0] < before[0], f"validation loss did not go down: {before[0]:.4f} -> {after[0]:.4f}"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if precision == 'bf16': return before, after   # the transfer to a classifier is checked in float32
    path = save_encoder(model.encoder, tmp_path/'encoder')
    cls_dls = cls_dls or dls
    clf = classifier_learner(cls_dls, model.encoder.arch, n_in=model.encoder.n_in, encoder_path=path)
    x = cls_dls.one_batch()[0][:4]
    enc = model.encoder.eval()
    clf.model.eval()
    with torch.no_grad():
        assert torch.allclose(clf.model.encoder.embed(x), enc.embed(x), atol=1e-5), "downstream body differs from the pretext encoder"
        assert clf.model(x).shape == (4, cls_dls.c)
    return before, after


def tiny_cnn(n_out=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_out))


def digit_folder(root, counts:dict, n_test:int=0):
    "A competition folder (train.csv, test.csv, images/) of real sample digits: `counts` = {class: number of training images}"
    import shutil, pandas as pd
    from pathlib import Path
    from self_supervised_fa.data.sample import get_sample_data
    src, root = get_sample_data(), Path(root)
    (root/'images').mkdir(parents=True, exist_ok=True)
    tr = pd.read_csv(src/'train.csv', dtype={'image_id': str})
    rows = pd.concat([tr[tr.label == c].head(n) for c, n in counts.items()])
    test = tr[~tr.image_id.isin(rows.image_id)].head(n_test)
    for i in list(rows.image_id) + list(test.image_id): shutil.copy(src/'images'/f'{i}.png', root/'images'/f'{i}.png')
    rows[['image_id', 'label']].to_csv(root/'train.csv', index=False)
    if n_test: test[['image_id']].to_csv(root/'test.csv', index=False)
    return root
