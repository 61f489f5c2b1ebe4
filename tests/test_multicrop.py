"""Multi-crop views: crop sizes and counts as configured, one forward per size group, the teacher on the global crops
only, replayable crops, `show` with two sizes, presets resolved from the image size; SimCLR and BYOL with local crops"""
import warnings
import matplotlib; matplotlib.use('Agg')
import pytest, torch
from torch import nn
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.schedule, fastai.callback.progress
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.pixels import get_norm_stats
from self_supervised_fa.augment.views import ViewAugment, small_image_augs
from self_supervised_fa.core.pixels import normalize, denormalize
from self_supervised_fa.augment.multicrop import multi_crop_augs, dino_augs, swav_augs, small_dino_augs, small_swav_augs, local_size_for
from self_supervised_fa.siamese.callback import MultiViewCallback
from self_supervised_fa.siamese.simclr import NTXentLoss, create_simclr_model, SimCLRCallback
from self_supervised_fa.siamese.byol import BYOLLoss, create_byol_model, BYOLCallback
from self_supervised_fa.siamese.dino import create_dino_model, DINOCallback

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')
SMALL = dict(hidden_size=32, projection_size=16, n_in=1)


@pytest.fixture(scope='module')
def dls(): return sample_dls(n_per_class=4, valid_df=load_sample_df('test').iloc[:16], bs=16)


@pytest.mark.parametrize('preset,n_local,sizes,scales', [
    (lambda: dino_augs(), 6, ((224, 224), (96, 96)), ((0.4, 1.), (0.05, 0.4))),
    (lambda: swav_augs(n_local=4), 4, ((224, 224), (96, 96)), ((0.14, 1.), (0.05, 0.14))),
    (lambda: small_dino_augs(28, n_local=3), 3, ((28, 28), (12, 12)), ((0.4, 1.), (0.05, 0.4))),
    (lambda: small_swav_augs(64, local_size=24, n_local=2), 2, ((64, 64), (24, 24)), ((0.14, 1.), (0.05, 0.14))),
    (lambda: multi_crop_augs((32, 48), n_global=3, n_local=1, global_scale=(0.5, 1.)), 1, ((32, 48), (12, 20)), ((0.5, 1.), (0.05, 0.4))),
])
def test_presets_as_configured(preset, n_local, sizes, scales):
    augs = preset()
    n_global = len(augs) - n_local
    assert [a.size for a in augs] == [sizes[0]] * n_global + [sizes[1]] * n_local
    assert [a.crop_scale for a in augs] == [scales[0]] * n_global + [scales[1]] * n_local
    x = torch.rand(3, 3, 70, 70)
    assert [tuple(a(x).shape) for a in augs] == [(3, 3, *sizes[0])] * n_global + [(3, 3, *sizes[1])] * n_local


def test_paper_blur_and_solarize_per_crop():
    d = dino_augs()
    assert [(a.blur_p, a.solarize_p) for a in d] == [(1., 0.), (0.1, 0.2)] + [(0.5, 0.)] * 6      # DINO, appendix / code
    assert {(a.blur_p, a.solarize_p, a.jitter_strength) for a in swav_augs()} == {(0.5, 0., 1.)}   # SwAV: blur 0.5 everywhere
    assert [(a.blur_p, a.solarize_p) for a in small_dino_augs(28)][:3] == [(0., 0.), (0., 0.2), (0., 0.)]
    assert {a.flip_p for a in dino_augs(blur_p=0., flip_p=0.)} == {0.} and {a.blur_p for a in dino_augs(blur_p=0.)} == {0.}


def test_views_sizes_counts_and_replay(dls):
    cb = MultiViewCallback(NTXentLoss(), small_dino_augs(28, n_local=4)); Learner(dls, create_simclr_model('test_resnet', **SMALL), cbs=cb)
    x = dls.one_batch()[0]
    v = cb.views(x, seed=3)
    assert [tuple(t.shape) for t in v] == [(16, 1, 28, 28)] * 2 + [(16, 1, 12, 12)] * 4
    assert (cb.n_views, cb.group_lens, cb.n_global) == (6, [2, 4], 2)
    for a, b in zip(v, cb.views(x, seed=3)): torch.testing.assert_close(a, b)            # a replayed seed: the same crops
    assert all((a - b).abs().amax() > 1e-3 for a, b in zip(v, cb.views(x, seed=4)))      # another seed: other crops
    stats = get_norm_stats(dls); x01 = denormalize(x.as_subclass(torch.Tensor), stats)
    v = cb.views(x)
    for aug, p, vi in zip(cb.augs, cb.params, v):                                        # recorded parameters replay each crop
        torch.testing.assert_close(normalize(aug(x01, params=p), stats), vi)


def test_views_of_one_size_must_be_consecutive():
    g, l = ViewAugment(28), ViewAugment(12)
    with pytest.raises(ValueError, match='consecutive'): MultiViewCallback(nn.Identity(), [g, l, g])
    assert MultiViewCallback(nn.Identity(), [g, g, l, l]).n_views == 4


def test_preset_function_resolved_from_the_image_size(dls):
    cb = SimCLRCallback(small_dino_augs)                       # a function of the size: called on the first batch
    assert cb.augs is None and cb.n_views is None
    Learner(dls, create_simclr_model('test_resnet', **SMALL), cbs=cb)
    v = cb.views(dls.one_batch()[0])
    assert cb.n_views == 8 and [t.shape[-1] for t in v] == [28] * 2 + [12] * 6
    assert DINOCallback().augs is None                         # DINO's default: its preset at the data's size


def test_show_draws_every_crop_with_its_size(dls):
    cb = MultiViewCallback(NTXentLoss(), small_dino_augs(28, n_local=3)); Learner(dls, create_simclr_model('test_resnet', **SMALL), cbs=cb)
    fig = cb.show(n=2)
    axs = fig.axes
    assert len(axs) == 2 * (1 + 5)                             # per image: the image and its 5 crops
    assert [ax.get_title() for ax in axs[:6]] == ['image'] + [f'view {i}, 28 px' for i in (1, 2)] + [f'view {i}, 12 px' for i in (3, 4, 5)]
    assert [ax.images[0].get_array().shape for ax in axs[6:12]] == [(28, 28)] * 3 + [(12, 12)] * 3


class _Calls(Callback):
    "Input shapes of every call of the student's and the teacher's encoder, per batch"
    order = 20
    def __init__(self): self.calls = []
    def before_fit(self):
        m = self.learn.model
        self.hooks = [enc.register_forward_hook(lambda mod, i, o, name=name: self.calls[-1].append((name, tuple(i[0].shape))))
                      for name, enc in [('student', m.encoder)] + ([('teacher', m.teacher.encoder)] if m.teacher is not None else [])]
    def before_batch(self): self.calls.append([])
    def after_fit(self):
        for h in self.hooks: h.remove()


@pytest.mark.parametrize('make,Cb,kw', [(create_simclr_model, SimCLRCallback, SMALL), (create_byol_model, BYOLCallback, SMALL),
                                        (create_dino_model, DINOCallback, dict(out_dim=64, hidden_size=32, bottleneck_size=16, n_in=1))])
def test_forward_once_per_size_group_teacher_sees_globals_only(make, Cb, kw, dls):
    "SimCLR and BYOL take local crops too (SwAV paper, table 4); each method's encoder runs once per size group"
    torch.manual_seed(0)
    model = make('test_resnet', **kw)
    calls = _Calls()
    learn = Learner(dls, model, cbs=[Cb(small_dino_augs(28, n_local=3)), calls])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert len(calls.calls) == len(dls.train) + len(dls.valid)
    for c in calls.calls:
        b = c[0][1][0] // 2
        want = [('student', (2 * b, 1, 28, 28)), ('student', (3 * b, 1, 12, 12))]
        if model.teacher is not None: want.append(('teacher', (2 * b, 1, 28, 28)))        # never a local crop
        assert c == want, c
    assert all(v == v for row in learn.recorder.values for v in row[:2])                  # finite (NaN != NaN)


def test_simclr_and_byol_losses_over_all_crops(dls):
    "NT-Xent with every crop of an image as a positive; BYOL's predictions of every crop against the other global targets"
    torch.manual_seed(0)
    cb = SimCLRCallback(small_dino_augs(28, n_local=2))
    model = create_simclr_model('test_resnet', **SMALL); Learner(dls, model, cbs=cb)
    out = model(*cb.views(dls.one_batch()[0]))
    torch.testing.assert_close(cb.compute_loss(out), NTXentLoss(cb.loss_func.temperature)(*out['proj']))
    assert len(out['proj']) == 4
    cb = BYOLCallback(small_dino_augs(28, n_local=2))
    model = create_byol_model('test_resnet', **SMALL); Learner(dls, model, cbs=cb)
    out = model(*cb.views(dls.one_batch()[0]))
    p, t = out['pred'], out['target']
    ref = torch.stack([(2 - 2 * torch.cosine_similarity(p[i], t[j], dim=-1)).mean()
                       for i, j in [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]]).mean()
    torch.testing.assert_close(cb.compute_loss(out), ref)


def test_method_learner_views_kwargs():
    "The registry's multi-crop settings reach the callback, `views_kwargs` override them, and a method without a preset refuses them"
    from self_supervised_fa.app.registry import method_learner, METHODS
    from self_supervised_fa.data.sample import sample_dls
    dls = sample_dls(n_per_class=2, bs=8)
    x = dls.one_batch()[0]
    n_views = lambda learn: len(learn.cbs[-1].augs_for(x))
    assert n_views(method_learner('dino', dls, 'test_resnet')) == 2 + METHODS['dino'].views_kwargs.get('n_local', 6)
    assert n_views(method_learner('dino', dls, 'test_resnet', views_kwargs=dict(n_local=3))) == 5
    assert n_views(method_learner('swav', dls, 'test_resnet', views_kwargs=dict(n_local=6))) == 8   # SwAV's preset: 2 global + 6 local crops
    with pytest.raises(ValueError, match="pass the views as `aug`"): method_learner('simclr', dls, 'test_resnet', views_kwargs=dict(n_local=0))
