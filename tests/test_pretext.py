"PretextCallback, the U-Net encoder-decoder and the masked pixel loss"
import pytest, torch, torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from fastai.torch_core import set_seed
from self_supervised_fa.data.sample import sample_dls, load_sample_df, SAMPLE_STATS
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.files import save_encoder
from self_supervised_fa.encoders.classifier import classifier_learner, create_classifier, encoder_splitter
from self_supervised_fa.pretext.core import *
from self_supervised_fa.augment.batch import *
from self_supervised_fa.pretext.decoder import *
from self_supervised_fa.pretext.pixel_loss import *
from helpers import CPUBf16Callback, PRECISIONS, tiny_dls, pretrain_and_transfer

class _Flip(PretextCallback):
    "Toy task: flip some images upside down, predict which"
    def make_batch(self, x):
        y = self.randint(2, (x.shape[0],), x.device)
        return torch.where(y[:, None, None, None].bool(), x.flip(-2), x), y


def test_callback_rewrites_train_and_valid_batches():
    dls = tiny_dls()
    cb = _Flip()
    learn = Learner(dls, create_classifier('test_resnet', 2, n_in=1), loss_func=nn.CrossEntropyLoss(), cbs=cb)
    x, y = dls.one_batch()
    for training in (True, False):
        learn.training = training
        learn.xb, learn.yb = (x,), (y,)
        cb.before_batch()
        f = learn.yb[0].bool()
        assert learn.yb[0].shape == (x.shape[0],) and set(learn.yb[0].tolist()) <= {0, 1}
        assert torch.equal(learn.xb[0][f], x[f].flip(-2)) and torch.equal(learn.xb[0][~f], x[~f])
    # validation batches are reproducible (seeded)
    learn.training = False
    learn.xb = (x,); cb.before_batch(); y1 = learn.yb[0]
    learn.xb = (x,); cb.before_batch(); assert torch.equal(y1, learn.yb[0])


def test_norm_stats_roundtrip():
    dls = tiny_dls()
    cb = _Flip()
    Learner(dls, create_classifier('test_resnet', 2, n_in=1), loss_func=nn.CrossEntropyLoss(), cbs=cb)
    x = dls.one_batch()[0]
    px = cb.denorm(x)
    assert torch.allclose(cb.stats[0].flatten(), torch.tensor(SAMPLE_STATS[0]))
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5
    # independent: the unnormalised pipeline gives the same pixels
    raw = sample_dls(n_per_class=5, bs=16, valid_df=load_sample_df('test').iloc[:64], normalize=False, shuffle=False)
    ref = sample_dls(n_per_class=5, bs=16, valid_df=load_sample_df('test').iloc[:64], shuffle=False)
    assert torch.allclose(cb.denorm(ref.valid.one_batch()[0]), raw.valid.one_batch()[0], atol=1e-5)
    assert torch.allclose(cb.norm(px), x, atol=1e-5)


def test_too_small_images_error():
    class _Big(_Flip): min_size = 32
    with pytest.raises(ValueError, match='at least 32x32.*Resize'): _Big()._make(torch.zeros(2, 1, 28, 28))
    learn = Learner(sample_dls(n_per_class=2, bs=4), nn.Linear(1, 1), cbs=_Flip())
    learn.xb = (torch.zeros(28, 28),)
    with pytest.raises(TypeError, match=r"\(B,C,H,W\)"): learn.cbs[-1].before_batch()


@pytest.mark.parametrize('arch', ['test_resnet', 'test_efficientnet', 'test_convnext', 'mobilenetv3_small_050'])
def test_unet_stages_match_body(arch):
    body = create_timm_body(arch, n_in=1).eval()
    st = unet_stages(body, (32, 32))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): assert torch.allclose(st(x), body(x), atol=1e-5)
    assert {id(p) for p in st.parameters()} <= {id(p) for p in body.parameters()}
    m = create_encoder_decoder(body, n_out=2, img_size=32)
    assert m.encoder is body and m(x).shape == (2, 2, 32, 32)


def test_unet_rejects_vit_and_bad_n_in():
    with pytest.raises(ValueError, match='CNN'): create_encoder_decoder('test_vit', img_size=32)
    with pytest.raises(ValueError, match='n_in=3'): create_encoder_decoder(create_timm_body('test_resnet', n_in=1), n_in=3)
    with pytest.raises(TypeError, match='TimmEncoder'): create_encoder_decoder(nn.Conv2d(1, 1, 3))


def test_training_the_unet_trains_the_encoder():
    body = create_timm_body('test_resnet', n_in=1)
    m = create_encoder_decoder(body, n_out=1, img_size=28)
    w0 = body.model.conv1[0].weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(4, 1, 28, 28)
    F.mse_loss(m(x), x).backward(); opt.step()
    assert not torch.equal(w0, body.model.conv1[0].weight)
    enc, dec = encoder_splitter(m)
    assert len(enc) == len(list(body.parameters())) and len(enc) + len(dec) == len(list(m.parameters()))


def test_masked_loss_independent_of_unmasked_pixels():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(3, 3, 10, 10, generator=g), torch.randn(3, 3, 10, 10, generator=g)
    mask = (torch.rand(3, 1, 10, 10, generator=g) < 0.3).float()
    sel = mask.bool().expand_as(p)
    for loss, ref in ((MaskedMSELoss(), F.mse_loss), (MaskedL1Loss(), F.l1_loss)):
        base = loss(p, t, mask)
        assert torch.allclose(base, ref(p[sel], t[sel]))
        assert torch.allclose(loss(torch.where(sel, p, p + 50), t, mask), base)      # unmasked prediction: no effect
        assert not torch.allclose(loss(torch.where(sel, p + 1, p), t, mask), base)   # masked prediction: counts
        assert torch.allclose(loss(p, t), ref(p, t))
    # gradients reach only the masked pixels
    pp = p.clone().requires_grad_()
    MaskedMSELoss()(pp, t, mask).backward()
    assert (pp.grad[~sel] == 0).all() and (pp.grad[sel] != 0).any()
    assert torch.allclose(MaskedMSELoss(unmasked_weight=1.)(p, t, mask), F.mse_loss(p, t))
    with pytest.raises(ValueError, match="kind"): MaskedPixelLoss('huber')


def test_masked_loss_half_precision_inputs():
    p, t = torch.randn(2, 3, 4, 4).half() * 300, torch.zeros(2, 3, 4, 4).half()
    assert torch.isfinite(MaskedMSELoss()(p, t, torch.ones(2, 1, 4, 4)))


def test_nan_loss_stops_a_pretext_task():
    "The base callback stops training on a NaN/infinite loss with an error naming the epoch and batch"
    dls = tiny_dls(n_per_class=2, bs=8)
    learn = Learner(dls, create_classifier('test_resnet', 2, n_in=1), loss_func=lambda p, y: nn.CrossEntropyLoss()(p, y) * float('inf'), cbs=_Flip())
    with pytest.raises(FloatingPointError, match='epoch 0, training batch 0'), learn.no_bar(): learn.fit(1)
