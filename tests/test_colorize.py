"Colorization: input is the target's luminance (independent formulas), Lab round trip, grey data refused, training, transfer"
import warnings, numpy as np, pytest, torch
from fastai.learner import Learner
from fastai.torch_core import set_seed
from self_supervised_fa.colorize import *
from self_supervised_fa.pretext import MaskedMSELoss
from test_pretext import PRECISIONS, tiny_dls, pretrain_and_transfer

skimage = pytest.importorskip('skimage')


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    set_seed(0)
    return colour_sample_dls(tmp_path_factory.mktemp('colour'), n_per_photo=16, bs=16)


def _attach(cb, dls, space='rgb'):
    Learner(dls, create_colorize_model('test_resnet', space=space, img_size=32), loss_func=MaskedMSELoss(), cbs=cb)
    return cb


def test_colour_sample(dls):
    x, y = dls.one_batch()
    assert x.shape == (16, 3, 32, 32) and len(dls.vocab) == 5 and len(dls.train_ds) == 60
    px = x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert (px.amax(1) - px.amin(1)).mean() > 0.05, "the crops should be in colour"


def test_rgb_input_is_luma_of_target(dls):
    cb = _attach(ColorizeCallback(), dls)
    x = dls.one_batch()[0]
    inp, targ = cb.make_batch(x)
    t = targ.permute(0, 2, 3, 1).numpy().astype(np.float64)
    luma = 0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]       # BT.601, written out
    grey = cb.denorm(inp).numpy()
    for c in range(3): np.testing.assert_allclose(grey[:, c], luma, atol=1e-5)
    np.testing.assert_allclose(targ.numpy(), cb.denorm(x).clamp(0, 1).numpy(), atol=1e-6)


def test_lab_input_and_target_match_skimage(dls):
    from skimage.color import rgb2lab
    cb = _attach(ColorizeCallback('lab'), dls, 'lab')
    x = dls.one_batch()[0]
    inp, ab = cb.make_batch(x)
    ref = rgb2lab(cb.denorm(x).clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float64))
    np.testing.assert_allclose(cb.grey(inp)[:, 0].numpy() * 100, ref[..., 0], atol=0.05)
    np.testing.assert_allclose(ab.permute(0, 2, 3, 1).numpy() * AB_SCALE, ref[..., 1:], atol=0.1)
    assert ab.abs().max() <= 1
    torch.testing.assert_close(cb.to_rgb(ab, inp), cb.denorm(x).clamp(0, 1), atol=1e-3, rtol=0)


def test_one_grey_channel_for_a_one_channel_encoder(dls):
    cb = _attach(ColorizeCallback(grey_channels=1), dls)
    x = dls.one_batch()[0]
    inp, targ = cb.make_batch(x)
    assert inp.shape == (16, 1, 32, 32)
    t = targ.numpy()
    np.testing.assert_allclose(cb.grey(inp)[:, 0].numpy(), 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2], atol=1e-5)
    m = create_colorize_model('test_resnet', n_in=1, img_size=32)
    assert m(inp).shape == (16, 3, 32, 32)


def test_grey_datasets():
    with pytest.raises(ValueError, match='1-channel.*no colour'): ColorizeCallback().make_batch(tiny_dls().one_batch()[0])
    grey3 = tiny_dls(n_in=3)
    cb = ColorizeCallback()
    Learner(grey3, create_colorize_model('test_resnet', img_size=28), loss_func=MaskedMSELoss(), cbs=cb)
    with pytest.warns(UserWarning, match='nothing to learn'): cb.make_batch(grey3.one_batch()[0])
    with pytest.raises(ValueError, match='space'): ColorizeCallback('hsv')


@PRECISIONS
def test_colorize_trains_and_transfers(dls, tmp_path, precision):
    model = create_colorize_model('test_resnet', img_size=32)
    pretrain_and_transfer(dls, model, ColorizeCallback(), MaskedMSELoss(), tmp_path, epochs=3, lr=3e-3, precision=precision)


def test_lab_model_and_loss(dls):
    cb = _attach(ColorizeCallback('lab'), dls, 'lab')
    inp, ab = cb.make_batch(dls.one_batch()[0])
    out = cb.learn.model(inp)
    assert out.shape == ab.shape and out.abs().max() <= 1   # y_range (-1, 1) covers ab / AB_SCALE
    MaskedMSELoss()(out, ab).backward()
