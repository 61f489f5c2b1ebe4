import warnings
import pytest, torch
from fastai.learner import Learner
from self_supervised_fa.barlow_twins import *
from self_supervised_fa.data.sample import sample_dls, load_sample_df

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')


def barlow_einsum(za, zb, lambd, eps=1e-5):
    "Independent Barlow Twins: BatchNorm1d(affine=False) standardisation (as the paper's code), explicit masks"
    bn = torch.nn.BatchNorm1d(za.shape[1], affine=False, eps=eps).to(za.dtype).train()
    c = torch.einsum('bi,bj->ij', bn(za), bn(zb)) / len(za)
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    return (((c - eye) ** 2) * eye).sum() + lambd * ((c ** 2) * (1 - eye)).sum()


@pytest.mark.parametrize('lambd', [5e-3, 0.5])
def test_barlow_matches_formula_value_and_gradient(lambd):
    torch.manual_seed(1)
    za, zb = torch.randn(16, 12, dtype=torch.float64, requires_grad=True), torch.randn(16, 12, dtype=torch.float64, requires_grad=True)
    l, ref = BarlowTwinsLoss(lambd)(za, zb), barlow_einsum(za, zb, lambd)
    torch.testing.assert_close(l, ref, atol=1e-10, rtol=1e-10)
    for g, gr in zip(torch.autograd.grad(l, (za, zb)), torch.autograd.grad(ref, (za, zb))): torch.testing.assert_close(g, gr, atol=1e-10, rtol=1e-8)


def test_barlow_properties():
    torch.manual_seed(0)
    z = torch.randn(256, 8)
    assert BarlowTwinsLoss(0.)(z, z * 3 + 1) < 1e-3                     # identical up to scale/shift: nothing to pay
    assert BarlowTwinsLoss(0.)(z, torch.randn(256, 8)) > 6.              # unrelated views: every C_ii ~ 0
    zz = torch.cat([z[:, :1]] * 8, 1)                                      # redundant dimensions: off-diagonal term
    assert BarlowTwinsLoss(1.)(zz, zz) > 50.


def test_barlow_low_precision_and_bad_input():
    torch.manual_seed(0)
    za, zb = torch.randn(64, 32) * 100, torch.randn(64, 32) * 100
    ref = BarlowTwinsLoss()(za, zb)
    for dtype in (torch.float16, torch.bfloat16):
        l = BarlowTwinsLoss()(za.to(dtype), zb.to(dtype))
        assert l.dtype == torch.float32 and torch.isfinite(l) and abs(l - ref) < 0.05 * ref
    with pytest.raises(ValueError, match='batch of 1'): BarlowTwinsLoss()(za[:1], zb[:1])
    with pytest.raises(ValueError, match='exactly 2 views'): BarlowTwinsLoss()(za, zb, za)
    with pytest.raises(ValueError, match='2-D'): BarlowTwinsLoss()(za[None], zb[None])


def test_model_has_paper_projector():
    m = create_barlow_twins_model('test_resnet', hidden_size=64, projection_size=48, n_in=1)
    assert [type(x).__name__ for x in m.projector] == ['Linear', 'BatchNorm1d', 'ReLU'] * 2 + ['Linear']
    assert m(torch.randn(3, 1, 28, 28))['proj'][0].shape == (3, 48) and m.encoder.embed_dim == m.projector[0].in_features


def test_fit_one_cycle_lowers_the_loss():
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=16, valid_df=load_sample_df('test').iloc[:32], bs=32)
    model = create_barlow_twins_model('test_resnet', hidden_size=128, projection_size=128, n_in=1)
    learn = Learner(dls, model, cbs=BarlowTwinsCallback(small_image_augs(28)))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    train_loss = [v[0] for v in learn.recorder.values]
    assert train_loss[-1] < 0.9 * train_loss[0], train_loss
