import warnings
import pytest, torch
from torch import nn
from fastai.learner import Learner
from self_supervised_fa.augment.views import ViewAugment, small_image_augs
from self_supervised_fa.core.pixels import normalize, denormalize
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.pixels import get_norm_stats
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.siamese.callback import MultiViewCallback, CollapseWatch
from self_supervised_fa.siamese.model import SiameseModel
from self_supervised_fa.encoders.heads import create_mlp
from self_supervised_fa.encoders.body import as_encoder
from self_supervised_fa.siamese.simclr import NTXentLoss

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')
IDENTITY = dict(crop_scale=(1., 1.), crop_ratio=(1., 1.), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)


@pytest.fixture(scope='module')
def dls(): return sample_dls(n_per_class=4, valid_df=load_sample_df('test').iloc[:32], bs=16)


@pytest.fixture(scope='module')
def model():
    body = create_timm_body('test_resnet', n_in=1)
    return SiameseModel(body, create_mlp(body.embed_dim, 32, 16))


def test_normalised_batch_round_trips(dls, model):
    "identity views of a Normalize'd batch come back exactly as the batch: denormalise -> augment -> normalise"
    cb = MultiViewCallback(NTXentLoss(), ViewAugment(None, **IDENTITY))
    Learner(dls, model, cbs=cb)
    x = dls.one_batch()[0]
    assert get_norm_stats(dls) is not None and x.min() < -0.3   # really normalised
    for v in cb.views(x): torch.testing.assert_close(v, x.as_subclass(torch.Tensor), atol=1e-5, rtol=0)


def test_views_differ_and_replay(dls, model):
    cb = MultiViewCallback(NTXentLoss(), small_image_augs(28)); Learner(dls, model, cbs=cb)
    x = dls.one_batch()[0]
    v = cb.views(x)
    assert (v[0] - v[1]).abs().amax(dim=(1, 2, 3)).min() > 1e-3          # per view, for every image
    d = (v[0][:, None] - v[0][None]).abs().amax(dim=(2, 3, 4)) + torch.eye(len(x)) * 9
    assert d.min() > 1e-3                                                # per image
    stats = get_norm_stats(dls); x01 = denormalize(x.as_subclass(torch.Tensor), stats)
    for aug, p, vi in zip(cb.augs, cb.params, v):                        # replay from the recorded parameters
        torch.testing.assert_close(normalize(aug(x01, params=p), stats), vi)
    torch.testing.assert_close(cb.views(x, seed=7)[1], cb.views(x, seed=7)[1])


def test_one_aug_per_view_and_count_checks():
    a, b = ViewAugment(None), ViewAugment(None, blur_p=1.)
    assert MultiViewCallback(nn.Identity(), [a, b]).augs == [a, b]
    assert len(MultiViewCallback(nn.Identity(), a, n_views=3).augs) == 3
    with pytest.raises(ValueError, match='two views'): MultiViewCallback(nn.Identity(), n_views=1)
    with pytest.raises(ValueError, match='one per view'): MultiViewCallback(nn.Identity(), [a, b], n_views=3)


def test_bad_batches(dls, model):
    cb = MultiViewCallback(NTXentLoss(), small_image_augs(28)); Learner(dls, model, cbs=cb)
    x = dls.one_batch()[0]
    with pytest.raises(ValueError, match='batch of 1'): cb.views(x[:1])
    with pytest.raises(TypeError, match='dtype'): cb.views((x * 255).byte())
    raw = sample_dls(n_per_class=2, valid_df=load_sample_df('test').iloc[:8], bs=8, normalize=False)
    cb2 = MultiViewCallback(NTXentLoss(), small_image_augs(28)); Learner(raw, model, cbs=cb2)
    with pytest.raises(ValueError, match='no Normalize'): cb2.views(raw.one_batch()[0] * 255)


class _Pair(nn.Module):
    "A model of one's own: maps views to (B, D) tensors, but returns them as a plain tuple, not named outputs"
    def __init__(self, body): super().__init__(); self.encoder = body
    def forward(self, *views): return tuple(self.encoder.embed(v) for v in views)


@pytest.mark.parametrize('make', [lambda b: b, _Pair])                 # feature maps; a tuple instead of a dict
def test_model_outputs_must_fit_the_method(dls, make):
    learn = Learner(dls, make(create_timm_body('test_resnet', n_in=1)), cbs=MultiViewCallback(NTXentLoss(), small_image_augs(28)))
    old = learn.loss_func
    with pytest.raises(ValueError, match=r"(needs the model to return a dict with \['proj'\]|does not take them).*create_simclr_model"): learn.fit(1)
    assert learn.loss_func is old                                        # learner left usable


class _NaNLoss(nn.Module):
    def forward(self, a, b): return (a * b).sum() * float('nan')


def test_nan_loss_stops_training(dls, model):
    learn = Learner(dls, model, cbs=MultiViewCallback(_NaNLoss(), small_image_augs(28)))
    with pytest.raises(FloatingPointError, match='nan'): learn.fit(1)


def test_get_encoder():
    body = create_timm_body('test_resnet', n_in=1)
    assert as_encoder(body) is body and as_encoder('test_resnet', n_in=1).n_in == 1
    with pytest.raises(TypeError, match='TimmEncoder'): as_encoder(nn.Linear(2, 2))


class _Shift(nn.Module):
    "An augmentation of one's own (no `many`): a random brightness shift per call"
    size, stats = None, None
    def forward(self, x, check=True): self._params = torch.rand(1); return (x + self._params * 0.1).clamp(0, 1)


def test_equal_settings_drawn_together_and_own_augs_one_by_one(dls, model):
    x = dls.one_batch()[0]
    a, b = small_image_augs(28), small_image_augs(28)                     # equal settings, two objects
    calls = []
    orig = type(a).many
    def spy(self, x, k, check=True): calls.append(k); return orig(self, x, k, check)
    type(a).many = spy
    try:
        cb = MultiViewCallback(NTXentLoss(), [a, b, small_image_augs(20)]); Learner(dls, model, cbs=cb)
        v = cb.views(x)
    finally: type(a).many = orig
    assert calls == [2, 1] and [t.shape[-1] for t in v] == [28, 28, 20]
    assert (v[0] - v[1]).abs().amax(dim=(1, 2, 3)).min() > 1e-3         # still two different views of every image
    own = _Shift()
    cb = MultiViewCallback(NTXentLoss(), [own, own]); Learner(dls, model, cbs=cb)
    v = cb.views(x)
    assert len(v) == 2 and len(cb.params) == 2 and not torch.equal(cb.params[0], cb.params[1])


def test_collapse_watch_means_per_epoch_and_warns_once():
    "Per-epoch means of the batches' values; one warning, the first time an epoch from `start` on is bad, with its mean"
    w = CollapseWatch(start=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for epoch, batches in enumerate([[0., 1.], [0.2, 0.2], [3., 5.], [0.5], [0.1, 0.3], [0.]]):
            for v in batches: w.add(torch.tensor(v))
            w.end_epoch(epoch, lambda m: m < 0.4, lambda m: f'low {m:.2f} in epoch {epoch}')
        assert w.end_epoch(6, lambda m: True, str) is None      # no batches in this epoch: nothing recorded
    torch.testing.assert_close(w.values, [0.5, 0.2, 4., 0.5, 0.2, 0.])
    assert [str(c.message) for c in caught] == ['low 0.20 in epoch 4'], caught   # epoch 1 is bad too but before `start`
