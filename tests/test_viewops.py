"The batched view ops against kornia and plain references, for the same parameters; the parameter distributions"
import math
import numpy as np, pytest, torch
import torch.nn.functional as F
import kornia, kornia.augmentation as K
from scipy import stats as sps
from scipy.spatial.transform import Rotation
from skimage import data as skdata
from self_supervised_fa.augment.ops import draw_crops, draw_view_params, crop_resize, apply_colour, apply_blur, apply_solarize, colour_maps
from self_supervised_fa.augment.views import ViewAugment


@pytest.fixture(scope='module')
def photos():
    "Four real colour photos, 64 px, float in [0,1]"
    ims = np.stack([im[:300, :300] for im in (skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()[:300, :300])])
    x = torch.from_numpy(ims).permute(0, 3, 1, 2).float().div(255)
    return F.interpolate(x, size=64, mode='area').clamp(0, 1)


def _mid(x): return 0.4 + 0.2 * x   # pixels where no jitter in the tests' ranges reaches the clamp


@pytest.mark.parametrize('in_size, out', [((64, 64), (32, 32)), ((40, 56), (24, 20)), ((28, 28), (12, 12)), ((30, 26), (96, 96))])
def test_crop_flip_equals_crop_then_interpolate(photos, in_size, out):
    "each image cropped to its own box by slicing, resized by F.interpolate (bilinear), flipped by torch.flip"
    torch.manual_seed(0)
    x = F.interpolate(photos, size=in_size, mode='area').repeat(8, 1, 1, 1)
    p = draw_view_params(len(x), in_size, 3, scale=(0.05, 1.))
    assert p['flip'].any() and not p['flip'].all()
    y = crop_resize(x, p, out)
    for i in range(len(x)):
        x0, y0, w, h = (int(v) for v in p['box'][i])
        r = F.interpolate(x[i:i + 1, :, y0:y0 + h, x0:x0 + w], size=out, mode='bilinear', align_corners=False)[0]
        torch.testing.assert_close(y[i], r.flip(-1) if p['flip'][i] else r, atol=2e-5, rtol=0)


def test_rotation_equals_kornia_rotate(photos):
    torch.manual_seed(0)
    p = draw_view_params(4, (64, 64), 3, scale=(1., 1.), ratio=(1., 1.), flip_p=0., rotate=40., rotate_p=1.)
    assert (p['angle'].abs() > 1).all()
    torch.testing.assert_close(crop_resize(photos, p, (64, 64), 'zeros'), kornia.geometry.rotate(photos, p['angle'].float()),
                               atol=1e-4, rtol=0)


def _kornia_jitter(x, p, b, c, s, h):
    "kornia's ColorJitter on `x` with our drawn factors and order"
    kp = dict(brightness_factor=p['factors'][:, 0].float(), contrast_factor=p['factors'][:, 1].float(),
              saturation_factor=p['factors'][:, 2].float(), hue_factor=p['factors'][:, 3].float(), order=p['order'],
              batch_prob=torch.ones(len(x), dtype=torch.bool), forward_input_shape=torch.tensor(x.shape))
    return K.ColorJitter(b, c, s, h, p=1.)(x, params=kp)


@pytest.mark.parametrize('seed', range(4))   # four random orders of the ops
def test_brightness_contrast_saturation_equal_kornia_colorjitter(photos, seed):
    torch.manual_seed(seed)
    x = _mid(photos).repeat(4, 1, 1, 1)
    p = draw_view_params(len(x), (64, 64), 3, jitter=(.4, .4, .4, 0.), jitter_p=1.)
    torch.testing.assert_close(apply_colour(x.clone(), p), _kornia_jitter(x, p, .4, .4, .4, 0.), atol=1e-5, rtol=0)
    x1 = x[:, :1].contiguous()                                          # grey images: brightness and contrast only
    p1 = draw_view_params(len(x1), (64, 64), 1, jitter=(.4, .4, .4, .1), jitter_p=1.)
    assert (p1['factors'][:, 2:] == torch.tensor([1., 0.], dtype=torch.float64)).all()
    torch.testing.assert_close(apply_colour(x1.clone(), p1), _kornia_jitter(x1, p1, .4, .4, 0., 0.), atol=1e-5, rtol=0)


def test_hue_is_a_rotation_about_the_grey_axis(photos):
    torch.manual_seed(0)
    x = _mid(photos).repeat(4, 1, 1, 1)
    p = draw_view_params(len(x), (64, 64), 3, jitter=(0., 0., 0., .2), jitter_p=1.)
    y = apply_colour(x.clone(), p)
    for i in range(len(x)):   # scipy's rotation about (1,1,1)/sqrt(3) by the drawn fraction of a turn
        R = torch.from_numpy(Rotation.from_rotvec(np.ones(3) / math.sqrt(3) * float(p['factors'][i, 3]) * 2 * math.pi).as_matrix())
        torch.testing.assert_close(y[i], torch.einsum('ij,jhw->ihw', R.float(), x[i]), atol=1e-5, rtol=0)
    k = _kornia_jitter(x, p, 0., 0., 0., .2)                           # close to kornia's HSV hue shift
    cos = F.cosine_similarity((y - x).flatten(1), (k - x).flatten(1))
    assert cos.min() > 0.7, cos                                        # (the opposite rotation gives about -0.8)
    prim = torch.eye(3)[:, :, None, None].expand(3, 3, 4, 4).contiguous()   # pure red, green, blue
    third = dict(jitter=torch.ones(3, dtype=torch.bool), gray=torch.zeros(3, dtype=torch.bool), order=torch.arange(4),
                 factors=torch.tensor([[1., 1., 1., 1 / 3]] * 3, dtype=torch.float64))
    torch.testing.assert_close(apply_colour(prim.clone(), third), kornia.enhance.adjust_hue(prim, torch.full((3,), 2 * math.pi / 3)),
                               atol=1e-5, rtol=0)


def test_grayscale_after_jitter_and_only_selected_images_change(photos):
    torch.manual_seed(1)
    x = photos.repeat(8, 1, 1, 1)
    p = draw_view_params(len(x), (64, 64), 3, jitter=(.8, .8, .8, .2), jitter_p=.5, grayscale_p=.5)
    y = apply_colour(x.clone(), p)
    untouched = ~(p['jitter'] | p['gray'])
    assert untouched.any() and (y[untouched] == x[untouched]).all()
    gray = p['gray']
    assert gray.any() and (y[gray] - y[gray][:, :1]).abs().max() < 1e-6   # all channels the grey value
    only = p['gray'] & ~p['jitter']
    torch.testing.assert_close(y[only], kornia.color.rgb_to_grayscale(x[only]).expand(-1, 3, -1, -1), atol=1e-6, rtol=0)
    assert y.min() >= 0 and y.max() <= 1


def test_colour_maps_compose_in_the_drawn_order():
    "contrast after brightness uses the brightened image's mean: compose by hand for one image and one order"
    p = dict(jitter=torch.tensor([True]), gray=torch.tensor([False]), order=torch.tensor([0, 1, 2, 3]),
             factors=torch.tensor([[1.5, 0.5, 1., 0.]], dtype=torch.float64))
    M, t, K_ = colour_maps(p, 3)
    x = torch.rand(3, dtype=torch.float64)                              # one pixel, which is also the image's mean
    grey = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    y = 1.5 * x; y = 0.5 * y + 0.5 * (grey @ y)
    torch.testing.assert_close(M[0] @ x + t[0] + K_[0] @ x, y)


def test_blur_equals_kornia_per_image_sigma(photos):
    torch.manual_seed(0)
    x = photos.repeat(4, 1, 1, 1)
    p = draw_view_params(len(x), (64, 64), 3, blur_p=.5, blur_sigma=(0.1, 3.))
    y = apply_blur(x.clone(), p, 9)
    assert p['blur'].any() and (~p['blur']).any()
    for i in range(len(x)):
        ref = kornia.filters.gaussian_blur2d(x[i:i + 1], (9, 9), (float(p['sigma'][i]),) * 2, border_type='reflect')[0] if p['blur'][i] else x[i]
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)


def test_solarize_equals_kornia(photos):
    p = dict(solarize=torch.tensor([True, False, True, False]))
    y = apply_solarize(photos, p)
    torch.testing.assert_close(y[p['solarize']], kornia.enhance.solarize(photos[p['solarize']], 0.5))
    assert (y[~p['solarize']] == photos[~p['solarize']]).all()


def test_crop_scales_and_ratios_follow_the_configured_ranges():
    "scale uniform and log-ratio uniform where every try fits; boxes inside the image; the fallback a central crop"
    torch.manual_seed(0)
    H = W = 224
    b = draw_crops(4000, H, W, scale=(0.1, 0.3), ratio=(3 / 4, 4 / 3))
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 0] + b[:, 2] <= W).all() and (b[:, 1] + b[:, 3] <= H).all()
    scale, log_r = (b[:, 2] * b[:, 3] / (H * W)).numpy(), torch.log(b[:, 2] / b[:, 3]).numpy()
    assert sps.kstest(scale, sps.uniform(0.1, 0.2).cdf).pvalue > 1e-3
    assert sps.kstest(log_r, sps.uniform(math.log(3 / 4), math.log(16 / 9)).cdf).pvalue > 1e-3
    b = draw_crops(2000, 32, 32, scale=(0.08, 1.))                     # whole pixels within the rounding of the range
    s = b[:, 2] * b[:, 3] / 1024
    assert s.min() > 0.05 and s.max() <= 1 and (b == b.round()).all()
    b = draw_crops(50, 30, 90, scale=(0.99, 1.), ratio=(1., 1.))       # no square fits 99 % of a 3:1 image
    assert (b == torch.tensor([30., 0., 30., 30.], dtype=torch.float64)).all()


def test_jitter_factors_and_coins_follow_the_configured_ranges():
    torch.manual_seed(0)
    n = 20000
    p = draw_view_params(n, (32, 32), 3, jitter=(.4, .3, .2, .1), jitter_p=.8, grayscale_p=.2, blur_p=.5, blur_sigma=(.1, 2.), solarize_p=.1)
    for j, (lo, hi) in enumerate([(.6, 1.4), (.7, 1.3), (.8, 1.2), (-.1, .1)]):
        assert sps.kstest(p['factors'][:, j].numpy(), sps.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert sps.kstest(p['sigma'].numpy(), sps.uniform(.1, 1.9).cdf).pvalue > 1e-3
    for k, q in [('jitter', .8), ('gray', .2), ('blur', .5), ('solarize', .1), ('flip', .5)]:
        assert abs(p[k].float().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / n), k
    assert sorted(p['order'].tolist()) == [0, 1, 2, 3]


def test_replay_seed_and_bad_params(photos):
    aug = ViewAugment(32, blur_p=.5, rotate=20)
    v = aug(photos); p = aug._params
    torch.testing.assert_close(aug(photos, params=p), v)
    torch.testing.assert_close(ViewAugment(32, blur_p=.5, rotate=20)(photos, seed=3), aug(photos, seed=3))
    with pytest.raises(ValueError, match='params must be'): aug(photos, params={'box': p['box']})
    with pytest.raises(ValueError, match='for 2 images'): aug(photos, params={k: v[:2] if k != 'order' else v for k, v in p.items()})
    with pytest.raises(ValueError, match='backend'): ViewAugment(32, backend='opencv')


@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_inputs(photos, dtype, tol):
    aug = ViewAugment(48, blur_p=.5)
    v = aug(photos)
    h = aug(photos.to(dtype), params=aug._params)
    assert h.dtype == dtype and (h.float() - v).abs().max() < tol


def test_kornia_backend_same_ops(photos):
    "backend='kornia' runs kornia's modules: identity settings agree with the fast ops, and it replays too"
    ident = dict(crop_scale=(1., 1.), crop_ratio=(1., 1.), flip_p=0, jitter_p=0, blur_p=0)
    g = ViewAugment(None, grayscale_p=1., **ident)
    torch.testing.assert_close(g(photos), ViewAugment(None, grayscale_p=1., backend='kornia', **ident)(photos), atol=1e-5, rtol=0)
    k = ViewAugment(32, backend='kornia')
    v = k(photos)
    torch.testing.assert_close(k(photos, params=k._params), v)
