import warnings
import pytest, torch, torch.nn.functional as F
from fastai.learner import Learner
from self_supervised_fa.simclr import *
from self_supervised_fa.data.sample import sample_dls, load_sample_df

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')


def ntxent_loop(zs, t):
    "Independent NT-Xent: per anchor, -log softmax over all other samples at each positive, written as a loop"
    z = F.normalize(torch.cat(zs), dim=1); n, b = len(z), len(zs[0])
    out = []
    for i in range(n):
        others = [k for k in range(n) if k != i]
        lse = torch.logsumexp(torch.stack([z[i] @ z[k] / t for k in others]), 0)
        pos = [k for k in others if k % b == i % b]
        out.append(torch.stack([lse - z[i] @ z[p] / t for p in pos]).mean())
    return torch.stack(out).mean()


@pytest.mark.parametrize('n_views', [2, 3])
def test_ntxent_matches_loop_value_and_gradient(n_views):
    torch.manual_seed(n_views)
    zs = [torch.randn(7, 5, dtype=torch.float64, requires_grad=True) for _ in range(n_views)]
    l, ref = NTXentLoss(0.2)(*zs), ntxent_loop(zs, 0.2)
    torch.testing.assert_close(l, ref, atol=1e-10, rtol=0)
    for g, gr in zip(torch.autograd.grad(l, zs), torch.autograd.grad(ref, zs)): torch.testing.assert_close(g, gr, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(lambda *a: NTXentLoss(0.2)(*a), zs)


@pytest.mark.parametrize('t', [0.07, 0.5])
def test_ntxent_matches_lightly(t):
    lightly_loss = pytest.importorskip('lightly.loss')
    torch.manual_seed(0)
    z0, z1 = torch.randn(64, 32, requires_grad=True), torch.randn(64, 32, requires_grad=True)
    l, ref = NTXentLoss(t)(z0, z1), lightly_loss.NTXentLoss(temperature=t)(z0, z1)
    assert abs(l.item() - ref.item()) < 1e-5
    for g, gr in zip(torch.autograd.grad(l, (z0, z1)), torch.autograd.grad(ref, (z0, z1))): torch.testing.assert_close(g, gr, atol=1e-5, rtol=1e-4)


def test_ntxent_low_precision_is_finite_and_float32():
    torch.manual_seed(0)
    z0, z1 = torch.randn(32, 16) * 300, torch.randn(32, 16) * 300      # large activations overflow fp16 products
    ref = NTXentLoss(0.05)(z0, z1)
    for dtype in (torch.float16, torch.bfloat16):
        a, b = z0.to(dtype).requires_grad_(), z1.to(dtype).requires_grad_()
        l = NTXentLoss(0.05)(a, b)
        assert l.dtype == torch.float32 and torch.isfinite(l)
        l.backward(); assert torch.isfinite(a.grad.float()).all() and a.grad.dtype == dtype
        assert abs(l.item() - ref.item()) < 0.05 * ref.item()
    lin = torch.nn.Linear(16, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        l = NTXentLoss(0.05)(lin(z0), lin(z1))
    assert l.dtype == torch.float32 and torch.isfinite(l)


def test_ntxent_bad_input():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match='no negatives'): NTXentLoss()(z[:1], z[:1])
    with pytest.raises(ValueError, match='two views'): NTXentLoss()(z)
    with pytest.raises(ValueError, match='2-D'): NTXentLoss()(z[..., None], z[..., None])
    with pytest.raises(ValueError, match='temperature'): NTXentLoss(0.)


def test_model_keeps_encoder():
    m = create_simclr_model('test_resnet', hidden_size=32, projection_size=8, n_in=1)
    x = torch.randn(3, 1, 28, 28)
    out = m(x, x.flip(-1))
    assert list(out) == ['proj'] and [z.shape for z in out['proj']] == [(3, 8)] * 2
    torch.testing.assert_close(m.eval().projector(m.encoder.embed(x)), m(x)['proj'][0])


def test_fit_one_cycle_lowers_the_loss():
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=16, valid_df=load_sample_df('test').iloc[:32], bs=32)
    model = create_simclr_model('test_resnet', hidden_size=64, projection_size=32, n_in=1)
    learn = Learner(dls, model, cbs=SimCLRCallback(small_image_augs(28), temperature=0.2))
    old = learn.loss_func
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 3e-3)
    train_loss = [v[0] for v in learn.recorder.values]
    assert train_loss[-1] < train_loss[0] - 0.1, train_loss
    assert abs(learn.recorder.values[-1][1] - 4.13) < 1., learn.recorder.values   # valid loss is NT-Xent's (log 63 = 4.14 at chance)
    assert learn.loss_func is old                # the learner's loss is given back after fit
