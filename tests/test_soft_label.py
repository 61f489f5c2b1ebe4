"SoftLabelCallback, soft-target loss and metrics: cross-checks against torch / scikit-learn and small real trainings"
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback
import fastai.callback.schedule, fastai.callback.progress  # fit_one_cycle, fine_tune, no_bar
from self_supervised_fa.data.sample import load_sample_df, subsample_per_class, sample_dls
from self_supervised_fa.labels.soft_label import *
from helpers import tiny_cnn


def small_dls(n_train=10, n_valid=5, bs=32, **kw):
    trn = subsample_per_class(load_sample_df('train'), n_train)
    return trn, sample_dls(trn, subsample_per_class(load_sample_df('test'), n_valid), bs=bs, **kw)

def random_probs(trn, seed=0):
    p = pd.DataFrame(np.random.default_rng(seed).dirichlet(np.ones(10), len(trn)), columns=[f'prob_{c}' for c in range(10)])
    p.insert(0, 'image_id', trn.image_id.values)
    return p.sample(frac=1, random_state=seed)  # any row order: rows are matched by image_id

class TargetSpy(Callback):
    "Record the training targets after SoftLabelCallback rewrote them, and the loss inputs"
    order = 50
    def __init__(self): self.targs, self.vtargs = [], []
    def before_batch(self): (self.targs if self.training else self.vtargs).append(self.yb[0].detach().clone())


def test_blend_formula():
    y = torch.tensor([3, 0, 1]); p = torch.softmax(torch.randn(3, 4), 1)
    for w in (0., 0.3, 1.):
        exp = torch.stack([w*torch.eye(4)[y[i]] + (1 - w)*p[i] for i in range(3)])
        torch.testing.assert_close(blend_targets(y, p, w), exp)
    with pytest.raises(ValueError, match=r'\[0, 1\]'): blend_targets(y, p, -0.01)
    with pytest.raises(ValueError, match=r'\[0, 1\]'): SoftLabelCallback(None, w=1.2)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_soft_ce_equals_hard_ce_on_one_hot(dtype):
    torch.manual_seed(0)
    x, y = torch.randn(16, 7).to(dtype), torch.randint(0, 7, (16,))
    ref = F.cross_entropy(x.float(), y)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(SoftTargetCrossEntropy()(x, F.one_hot(y, 7).to(dtype)), ref, **tol)
    torch.testing.assert_close(SoftTargetCrossEntropy()(x, y), ref, **tol)
    assert SoftTargetCrossEntropy()(x, y).dtype == torch.float32

def test_soft_ce_formula_and_fp16_extremes():
    x = torch.randn(5, 3); t = torch.softmax(torch.randn(5, 3), 1)
    torch.testing.assert_close(SoftTargetCrossEntropy()(x, t), -(t*torch.log(torch.softmax(x, 1))).sum(1).mean())
    big = torch.tensor([[60000., -60000., 0.]], dtype=torch.float16)  # overflows a half-precision softmax
    assert torch.isfinite(SoftTargetCrossEntropy()(big, torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float16)))

def test_auc_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300); p = rng.dirichlet(np.ones(5), 300)
    p[:, 2] = p[:, 2].round(1)  # ties
    onehot = np.eye(5)[y]
    ref = roc_auc_score(onehot, p, average='macro')
    assert mean_roc_auc(torch.tensor(p), torch.tensor(y)) == pytest.approx(ref, abs=1e-12)
    assert mean_roc_auc(torch.tensor(p), torch.tensor(onehot)) == pytest.approx(ref, abs=1e-12)
    assert mean_roc_auc(p, torch.tensor(onehot*0.8 + 0.04)) == pytest.approx(ref, abs=1e-12)  # soft targets: argmax
    acc = soft_accuracy(torch.tensor(p), torch.tensor(onehot*0.8 + 0.04))
    assert float(acc) == pytest.approx((p.argmax(1) == y).mean())

def test_trains_on_blend_validates_on_given_labels():
    trn, dls = small_dls()
    probs, w = random_probs(trn), 0.4
    spy = TargetSpy()
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), metrics=[soft_accuracy, RocAucMean()],
                    cbs=[SoftLabelCallback(probs, w=w), spy])
    with learn.no_bar(): learn.fit(1, 1e-3)
    items = dls.train.items.reset_index(drop=True)
    p = torch.tensor(probs.set_index('image_id').loc[items.image_id].values, dtype=torch.float32)
    expected = blend_targets(torch.tensor(items.label.values), p, w)
    seen = torch.cat(spy.targs)
    match = torch.cdist(seen, expected).argmin(1)
    torch.testing.assert_close(seen, expected[match])     # every target is one item's blend
    assert len(set(match.tolist())) == len(seen)            # each item at most once per epoch
    assert match.tolist() != sorted(match.tolist())         # shuffled
    vt = torch.cat(spy.vtargs)                             # validation: the given (hard) labels
    assert not vt.is_floating_point() and vt.tolist() == dls.valid.items.label.tolist()
    assert len(learn.recorder.values[-1]) == 4              # train loss, valid loss, accuracy, AUC

def test_fine_tune_savemodel_get_preds(tmp_path):
    from self_supervised_fa.encoders.classifier import classifier_learner
    trn, dls = small_dls(n_train=6, n_valid=3, bs=16)
    spy = TargetSpy()
    learn = classifier_learner(dls, 'test_resnet', loss_func=SoftTargetCrossEntropy(), metrics=soft_accuracy,
                               path=tmp_path, cbs=[SoftLabelCallback(random_probs(trn), w=0.5), spy])
    learn.freeze()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-3, freeze_epochs=1, cbs=SaveModelCallback(monitor='valid_loss', fname='best'))
    assert (tmp_path/'models'/'best.pth').exists()
    assert len(spy.targs) == 2*len(dls.train) and all(t.is_floating_point() for t in spy.targs)  # both stages soft
    preds, targs = learn.get_preds()
    assert preds.shape == (len(dls.valid_ds), 10) and torch.allclose(preds.sum(1), torch.ones(len(preds)))
    assert targs.tolist() == dls.valid.items.label.tolist()
    preds, targs = learn.get_preds(ds_idx=0)  # the training set, after fit: given labels, not the blend
    assert not targs.is_floating_point()

def test_bad_probabilities_fail_before_training():
    trn, dls = small_dls()
    probs = random_probs(trn)
    def fit(p):
        learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=SoftLabelCallback(p))
        w0 = [q.clone() for q in learn.model.parameters()]
        with pytest.raises((ValueError, KeyError)) as e, learn.no_bar(): learn.fit(1)
        assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters()))  # nothing trained
        return str(e.value)
    bad = probs.copy(); bad.iloc[0, 1] += 0.3
    assert 'sum to 1' in fit(bad) and bad.iloc[0, 0] in fit(bad)
    nan = probs.copy(); nan.iloc[4, 2] = np.nan
    assert 'missing' in fit(nan)
    assert 'no pseudo-labels' in fit(probs.iloc[3:])
    assert 'unknown to the DataLoaders' in fit(probs.assign(prob_11=0.))
    assert "no probability column for classes ['9']" in fit(probs.drop(columns='prob_9'))
    assert probs.shape == (len(trn), 11)  # the caller's pseudo-labels are untouched

def test_indexed_dl_indices_follow_their_items():
    from fastai.data.load import DataLoader, SkipItemException
    items = [(i * 10, i % 3) for i in range(50)]
    dl = DataLoader(items, bs=8, shuffle=True, drop_last=True)
    seen = []
    for x, y, idx in indexed_dl(dl):  # the item indices appended
        assert idx.dtype == torch.long and torch.equal(x, idx * 10) and torch.equal(y, idx % 3)
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) == 48 and seen != sorted(seen)  # shuffled, each item at most once
    for b, idx in indexed_dl(DataLoader(list(range(10)), bs=4)): assert torch.equal(b, idx)  # an untupled item
    def skip_odd(o):  # items skipped by a transform: shorter batches, the indices still with their items
        if o[0] % 20: raise SkipItemException()
        return o
    got = [(x, i) for x, y, i in indexed_dl(DataLoader(items, bs=8, shuffle=True, after_item=skip_odd))]
    assert sum(len(x) for x, _ in got) == 25 and all(torch.equal(x, i * 10) for x, i in got)
    with pytest.raises(ValueError, match='bs is None'): indexed_dl(DataLoader(items, bs=None))

def test_indexed_dl_on_image_dataloaders_keeps_the_pipeline():
    "fastai DataBlock loaders: images transformed and normalised as before, labels typed, indices plain longs"
    trn, dls = small_dls(bs=16)
    (x0, y0), (x, y, idx) = dls.train.new(shuffle=False).one_batch(), indexed_dl(dls.train.new(shuffle=False)).one_batch()
    assert torch.equal(x0, x) and torch.equal(y0, y) and type(x) is type(x0) and type(y) is type(y0)
    assert type(idx) is torch.Tensor and idx.tolist() == list(range(16))
    for x, y, idx in indexed_dl(dls.train):
        assert torch.equal(y.cpu(), torch.tensor(trn.label.values[idx.cpu().numpy()]))

def test_item_labels_read_the_label_pipeline():
    from fastai.data.load import DataLoader
    trn, dls = small_dls()
    assert item_labels(dls.train).tolist() == dls.train.items.label.tolist()
    assert item_labels(DataLoader([(i, (7 * i) % 5) for i in range(20)], bs=4)).tolist() == [(7 * i) % 5 for i in range(20)]

def test_soft_targets_come_with_the_batch_and_label_mismatch_fails():
    trn, dls = small_dls()
    probs = random_probs(trn)
    cb = SoftLabelCallback(probs, w=0.2)
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    items = dls.train.items.reset_index(drop=True)
    p = torch.tensor(probs.set_index('image_id').loc[items.image_id].values, dtype=torch.float32)
    torch.testing.assert_close(cb.table, blend_targets(torch.tensor(items.label.values), p, 0.2))  # blended once
    spy = TargetSpy()
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=[cb, spy])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert all(t.shape[1:] == (10,) and t.is_floating_point() for t in spy.targs)            # soft rows in training
    assert all(t.ndim == 1 for t in spy.vtargs)                                                # given labels in validation
    seen, rows = [tuple(r) for r in torch.cat(spy.targs).tolist()], [tuple(r) for r in cb.table.tolist()]
    assert len(seen) == len(set(seen)) == len(rows) // 32 * 32 and set(seen) <= set(rows)     # item rows, each once (drop_last)
    class WrongLabels(SoftLabelCallback):
        def setup(self, dl): super().setup(dl); self.labels = (self.labels + 1) % 10
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=WrongLabels(probs))
    with pytest.raises(ValueError, match='labels differ'), learn.no_bar(): learn.fit(1)
