"RankMe (Garrido et al., ICML 2023) against an independent numpy computation and known spectra, and RankMeCallback in a fit"
import copy, warnings
import numpy as np, pytest, torch
from torch import nn
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader as FaDL
import fastai.callback.progress  # noqa: F401 (no_bar)
from helpers import tiny_dls
from self_supervised_fa.evaluate.embeddings import get_embeddings
from self_supervised_fa.evaluate.monitor import rankme, RankMeCallback, MonitorCallback, KNNMonitorCallback

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def np_rankme(f, eps=1e-7):
    "The paper's eq. 1 written out with numpy: the singular values as a distribution, exp of its entropy"
    s = np.linalg.svd(np.asarray(f, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def spectrum(n, d, sv, seed=0):
    "An (n, d) matrix whose non-zero singular values are exactly `sv`: orthonormal columns x diag(sv) x orthonormal rows"
    g = np.random.default_rng(seed)
    u = np.linalg.qr(g.standard_normal((n, len(sv))))[0]
    v = np.linalg.qr(g.standard_normal((d, len(sv))))[0]
    return (u * np.asarray(sv, dtype=np.float64)) @ v.T


@pytest.mark.parametrize('shape', [(200, 30), (30, 200), (64, 64), (5, 1)])
def test_rankme_matches_numpy_svd(shape):
    g = np.random.default_rng(1)
    f = g.standard_normal(shape) * g.uniform(0.1, 3, shape[1]) + g.standard_normal(shape[1])   # not centred, uneven scales
    assert rankme(torch.tensor(f, dtype=torch.float32)) == pytest.approx(np_rankme(f.astype(np.float32)), rel=1e-9)
    assert rankme(f) == pytest.approx(np_rankme(f), rel=1e-12)   # numpy input, float64 throughout
    assert rankme(f, eps=0) == pytest.approx(np_rankme(f, eps=0), rel=1e-12)


@pytest.mark.parametrize('r', [1, 2, 5, 17, 64])
def test_rankme_of_r_equal_singular_values_is_r(r):
    "exactly r with eps = 0; the paper's eps = 1e-7 on each of the 64 singular values adds under 2e-4 relative"
    f = spectrum(500, 64, [3.0] * r, seed=r)
    assert rankme(f, eps=0) == pytest.approx(r, abs=1e-6)
    p = np.array([1 / r] * r + [0.0] * (64 - r)) + 1e-7
    assert rankme(f) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-7)
    assert rankme(f) == pytest.approx(r, rel=2e-4)


def test_rankme_known_spectra():
    g = np.random.default_rng(0)
    assert rankme(np.outer(g.standard_normal(300), g.standard_normal(40))) == pytest.approx(1, abs=1e-3)   # rank 1
    assert rankme(np.ones((100, 16))) == pytest.approx(1, abs=1e-3)                                        # constant rows
    assert rankme(np.zeros((10, 4))) == 1.0                                                                # nothing at all
    # two singular values 3:1, so p = (3/4, 1/4): exp of the entropy, written out
    want = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert rankme(spectrum(50, 8, [3.0, 1.0]), eps=0) == pytest.approx(want, rel=1e-10)
    # the features as they are, not centred: a shared offset on centred noise lowers RankMe (the paper does not centre)
    noise = g.standard_normal((2000, 32))
    assert rankme(noise + 20) < 0.5 * rankme(noise)


def test_rankme_isotropic_gaussian_is_near_full():
    """N = 4096 draws of a 64-d standard Gaussian: the singular values spread about +-12% around sqrt(N) (Marchenko-Pastur),
    so RankMe is just under 64: about 64 exp(-D/8N) = 63.875 to second order"""
    f = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    v = rankme(f)
    assert 63.8 < v < 64   # measured 63.876 (seeds 0-4: 63.868 to 63.879)
    assert v == pytest.approx(64 * np.exp(-64 / (8 * 4096)), abs=0.02)
    assert v == pytest.approx(np_rankme(f.numpy()), rel=1e-9)


def test_rankme_is_scale_invariant():
    f = np.random.default_rng(2).standard_normal((300, 20)) @ np.diag(np.linspace(0.1, 2, 20))
    for c in (1e-4, 0.5, 7.0, 1e5, -3.0):
        assert rankme(c * f) == pytest.approx(rankme(f), rel=1e-9)


def test_rankme_bad_input():
    with pytest.raises(ValueError, match='2-D'): rankme(torch.randn(10))
    with pytest.raises(ValueError, match='NaN or inf'): rankme(torch.tensor([[1.0, float('nan')], [0.0, 1.0]]))


def test_rankme_agrees_with_lightly():
    "lightly's own RankMe (if this lightly has one) on the same matrices"
    lightly = pytest.importorskip('lightly')
    fn = None
    for mod, name in (('lightly.utils.debug', 'rankme'), ('lightly.utils.debug', 'calc_rankme'),
                      ('lightly.utils.rankme', 'rankme'), ('lightly.utils.rankme', 'calc_rankme')):
        try: fn = getattr(__import__(mod, fromlist=[name]), name); break
        except (ImportError, AttributeError): continue
    if fn is None: pytest.skip(f"lightly {lightly.__version__} has no RankMe")
    g = torch.Generator().manual_seed(3)
    for f in (torch.randn(500, 32, generator=g), torch.randn(40, 100, generator=g) + 2, torch.tensor(spectrum(200, 16, [1.0] * 5))):
        assert rankme(f) == pytest.approx(float(fn(f)), rel=1e-4)


class Net(nn.Module):
    "A small CNN classifier whose `encoder` ends in 16-d vectors (so 64 validation digits are more than its dimensions)"
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 10)
    def forward(self, x): return self.head(self.encoder(x))


def _fit(model, mon, dls, epochs=2, lr=3e-3):
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=mon)
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr)
    return learn


def test_rankme_callback_records_in_recorder():
    "`start` is the untouched encoder's RankMe, one value per epoch reaches the recorder as `rankme`, and it is the trained encoder's"
    dls = tiny_dls()
    torch.manual_seed(0)
    model = Net()
    want_start = rankme(get_embeddings(copy.deepcopy(model.encoder), dls.valid, progress=False)[0])
    mon = RankMeCallback(dls)
    assert mon.dl is dls.valid and mon.metric_name == 'rankme' and mon.higher_is_better
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)   # 64 images for 16 dimensions: no warning
        learn = _fit(model, mon, dls)
    assert mon.start == pytest.approx(want_start, rel=1e-6)
    assert 'rankme' in learn.recorder.metric_names
    col = list(learn.recorder.metric_names[1:]).index('rankme')
    vals = [r[col] for r in learn.recorder.values]
    assert vals == mon.history and len(vals) == 2
    assert vals[-1] == pytest.approx(rankme(get_embeddings(model.encoder, dls.valid, progress=False)[0]), rel=1e-6)
    assert vals[-1] != pytest.approx(mon.start)    # the weights moved
    assert not any(m is mon.metric for m in learn.metrics)   # removed after fit


def test_collapsed_encoder_scores_near_one():
    "A constant encoder output (last layer's weights zeroed, its bias kept) is rank 1; the random init is clearly higher"
    dls = tiny_dls()
    torch.manual_seed(0)
    model, collapsed = Net(), Net()
    with torch.no_grad(): collapsed.encoder[-1].weight.zero_(); collapsed.encoder[-1].bias.normal_()
    mons = [RankMeCallback(dls), RankMeCallback(dls)]
    _fit(model, mons[0], dls, epochs=1, lr=0.0)
    _fit(collapsed, mons[1], dls, epochs=1, lr=0.0)   # lr 0: stays collapsed through the epoch
    assert mons[1].start == pytest.approx(1, abs=1e-3) and mons[1].history[-1] == pytest.approx(1, abs=1e-3)
    assert mons[0].start > 1.5   # measured 1.95: the mean shared by all ReLU features is one big direction of its own
    assert mons[0].history[-1] == pytest.approx(mons[0].start, rel=1e-6)


def test_rankme_callback_loader_choice_and_small_sample_warning():
    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(1, 28, 28, generator=g), 0) for _ in range(8)]
    both, no_valid = DataLoaders(FaDL(items, bs=4), FaDL(items[:3], bs=4)), DataLoaders(FaDL(items, bs=4), FaDL([], bs=4))
    assert RankMeCallback(both).dl is both.valid and RankMeCallback(no_valid).dl is no_valid.train
    assert RankMeCallback(both.train).dl is both.train
    torch.manual_seed(0)
    mon = RankMeCallback(both.train)          # 8 images for 16 dimensions
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        _fit(Net(), mon, DataLoaders(FaDL(items, bs=4), FaDL(items, bs=4)), epochs=2, lr=0.0)
    msgs = [str(x.message) for x in w if 'RankMeCallback' in str(x.message)]
    assert len(msgs) == 1 and '8 images for 16-dimensional' in msgs[0]   # once, though measured three times
    assert len(mon.history) == 2 and 1 <= mon.start <= 8


def test_one_monitor_base():
    "Both monitors share MonitorCallback's machinery; the kNN monitor's signature and names are unchanged"
    import inspect
    assert issubclass(KNNMonitorCallback, MonitorCallback) and issubclass(RankMeCallback, MonitorCallback)
    assert list(inspect.signature(KNNMonitorCallback).parameters) == ['dls', 'k', 'temperature', 'get_encoder', 'name',
                                                                     'stage', 'pool', 'at_start']
    for cls in (KNNMonitorCallback, RankMeCallback):
        assert all(m not in vars(cls) for m in ('before_fit', 'after_validate', 'after_fit')), cls
    assert KNNMonitorCallback(None, stage=2).metric_name == 'knn_top1_s2' and RankMeCallback(None, stage=1).metric_name == 'rankme_s1'
    with pytest.raises(NotImplementedError): MonitorCallback().measure()
