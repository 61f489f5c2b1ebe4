"Colorization: input is the target's luminance (independent formulas), Lab round trip, grey data refused, training, transfer"
import warnings, numpy as np, pytest, torch
from fastai.learner import Learner
from fastai.torch_core import set_seed
from self_supervised_fa.colorize import *
from self_supervised_fa.data.colour import *
from self_supervised_fa.pretext.pixel_loss import MaskedMSELoss
from helpers import PRECISIONS, tiny_dls, pretrain_and_transfer

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


def test_colour_sample_other_photos(tmp_path):
    "photos= picks the classes; crops match the photo they are named after; other settings write the folder again"
    import pandas as pd
    from PIL import Image
    from self_supervised_fa.data.photos import load_photo
    names = ('china', 'flower', 'grace_hopper')
    root = get_colour_sample(tmp_path/'c', n_per_photo=4, photos=names)
    df = pd.read_csv(root/'crops.csv')
    assert sorted(df.label.unique()) == sorted(names) and len(df) == 12 and df.is_valid.sum() == 3
    crop = np.asarray(Image.open(root/'images'/f"{df.image_id[0]}.png")).astype(float)
    means = {n: np.abs(crop.mean((0, 1)) - load_photo(n)[..., :3].reshape(-1, 3).mean(0)).sum() for n in names}
    assert crop.shape == (32, 32, 3) and min(means, key=means.get) == df.label[0], means   # closest in mean colour to its own photo
    again = get_colour_sample(tmp_path/'c', n_per_photo=4, photos=names[:2])      # same path, other photos: not the stale folder
    assert sorted(pd.read_csv(again/'crops.csv').label.unique()) == sorted(names[:2])
    assert colour_sample_dls(tmp_path/'d', n_per_photo=4, photos=names, bs=4).vocab == sorted(names)
    for bad in (['china', 'mnist'], ['china'], ['china', 'china']):
        with pytest.raises(ValueError, match='PHOTO_CLASSES'): get_colour_sample(tmp_path/'e', photos=bad)
    assert not (tmp_path/'e').exists()


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


def test_ab_bins_cover_the_srgb_gamut():
    from skimage.color import rgb2lab
    bins = ab_bins()
    assert bins.shape[1] == 2 and 240 < len(bins) < 320 and len(bins.unique(dim=0)) == len(bins)
    rgb = np.random.default_rng(0).random((2000, 1, 3))      # independent: skimage's Lab of random sRGB colours
    ab = torch.tensor(rgb2lab(rgb)[:, 0, 1:], dtype=torch.float32)
    assert torch.cdist(ab, bins).min(1).values.max() <= 5 * 2 ** 0.5 + 0.5   # every colour lies in a bin's 10x10 cell


def test_soft_encoding_and_weights_match_numpy():
    loss = ABBinLoss(sigma=5., n_neighbours=5)
    g = torch.Generator().manual_seed(0)
    ab = torch.rand(2, 2, 3, 4, generator=g) * 120 - 60
    soft, near = loss.encode(ab)
    B = loss.bins.numpy().astype(np.float64)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        d = np.sqrt(((B - ab[b, :, i, j].numpy()) ** 2).sum(1))
        nn5 = np.argsort(d)[:5]
        w = np.exp(-d[nn5] ** 2 / 50); w /= w.sum()
        want = np.zeros(len(B)); want[nn5] = w
        np.testing.assert_allclose(soft[b, :, i, j].numpy(), want, atol=1e-5)
        assert near[b, i, j] == np.argmin(d)
    prior = torch.rand(len(B), generator=g) ** 4; prior /= prior.sum()
    K = np.exp(-((B[:, None] - B[None]) ** 2).sum(-1) / 50); K /= K.sum(1, keepdims=True)
    p = K @ prior.numpy().astype(np.float64)
    w = 1 / (0.5 * p + 0.5 / len(B)); w /= (p * w).sum()
    np.testing.assert_allclose(rebalance_weights(prior, loss.bins).numpy(), w, rtol=1e-4)
    # the loss: weighted cross-entropy against the soft targets, written out
    scores = torch.randn(2, len(B), 3, 4, generator=g)
    lw = ABBinLoss(prior)
    ce = -(soft * torch.log_softmax(scores, 1)).sum(1)
    torch.testing.assert_close(lw(scores, ab / AB_SCALE), (torch.tensor(w, dtype=torch.float32)[near] * ce).mean(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='n_bins'): lw(scores[:, :10], ab / AB_SCALE)


def test_ab_prior_matches_skimage(dls):
    from skimage.color import rgb2lab
    bins = ab_bins()
    got = ab_prior(dls, bins)
    counts = np.zeros(len(bins))
    for x, _ in dls.train.new(shuffle=False, drop_last=False):   # independent: skimage's Lab of the un-normalised crops, nearest bin by numpy
        px = (x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)).clamp(0, 1)
        ab = rgb2lab(px.permute(0, 2, 3, 1).numpy().astype(np.float64))[..., 1:].reshape(-1, 2)
        np.add.at(counts, ((ab[:, None] - bins.numpy()[None]) ** 2).sum(-1).argmin(1), 1)
    assert got.sum() == pytest.approx(1) and np.abs(got.numpy() - counts / counts.sum()).sum() < 0.03


def test_bin_colorizer_trains_and_shows(dls, tmp_path):
    import matplotlib; matplotlib.use('Agg')
    loss = ABBinLoss(ab_prior(dls))
    model = create_colorize_model('test_resnet', space='lab', img_size=32, n_bins=loss.n_bins)
    cb = ColorizeCallback('lab')
    pretrain_and_transfer(dls, model, cb, loss, tmp_path, epochs=3, lr=3e-3)
    assert len(cb.show_results(n=4).axes) == 12                    # grey, predicted (decoded from the bins), true
    with pytest.raises(ValueError, match="space='lab'"): create_colorize_model('test_resnet', n_bins=10)
    cb2 = _attach(ColorizeCallback('lab'), dls, 'lab')              # a 2-channel loss cannot decode bin scores
    with pytest.raises(ValueError, match='ABBinLoss'): cb2.to_rgb(torch.zeros(1, loss.n_bins, 4, 4), torch.zeros(1, 3, 4, 4))
