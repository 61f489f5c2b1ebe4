import warnings
import numpy as np, pytest, torch
from skimage import data as skdata
from self_supervised_fa.augment.views import ViewAugment, simclr_augs, small_image_augs
from self_supervised_fa.core.pixels import check_images, normalize, denormalize


@pytest.fixture(scope='module')
def photos():
    "Three real colour photos, 48 px, float in [0,1]"
    ims = np.stack([im[:300, :300] for im in (skdata.astronaut(), skdata.chelsea(), skdata.coffee())])
    x = torch.from_numpy(ims).permute(0, 3, 1, 2).float().div(255)
    return torch.nn.functional.interpolate(x, size=48, mode='area').clamp(0, 1)


def _per_image_diff(a, b): return (a - b).abs().amax(dim=(1, 2, 3))


def test_views_differ_per_image_and_per_view_and_replay(photos):
    torch.manual_seed(0)   # unseeded, strong jitter can black out both views of an image now and then (diff 0)
    aug = simclr_augs(32)
    x = torch.cat([photos, photos])                     # the same image twice in one batch
    v1 = aug(x); p1 = aug._params
    v2 = aug(x)
    assert v1.shape == (6, 3, 32, 32)
    assert _per_image_diff(v1, v2).min() > 1e-3          # each call draws new parameters for every image
    assert _per_image_diff(v1[:3], v1[3:]).min() > 1e-3  # copies of one image get different views
    crop = p1['box']
    assert len({tuple(b.flatten().tolist()) for b in crop}) == len(x)  # a crop box per image
    torch.testing.assert_close(aug(x, params=p1), v1)    # replay gives the same views
    torch.testing.assert_close(aug(x, seed=3), aug(x, seed=3))
    assert _per_image_diff(aug(x, seed=3), aug(x, seed=4)).min() > 1e-3


def test_seeded_draw_leaves_global_rng(photos):
    torch.manual_seed(0); a = torch.rand(3)
    torch.manual_seed(0); simclr_augs(32)(photos, seed=5); b = torch.rand(3)
    torch.testing.assert_close(a, b)


def test_identity_settings_return_input(photos):
    aug = ViewAugment(None, crop_scale=(1., 1.), crop_ratio=(1., 1.), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    torch.testing.assert_close(aug(photos), photos, atol=1e-5, rtol=0)


def test_jitter_and_grayscale_change_colour(photos):
    gray = ViewAugment(None, crop_scale=(1., 1.), crop_ratio=(1., 1.), flip_p=0, jitter_p=0, grayscale_p=1., blur_p=0)(photos)
    assert (gray[:, 0] - gray[:, 1]).abs().max() < 1e-5 and (photos[:, 0] - photos[:, 1]).abs().max() > 0.1


def test_any_size_and_output_size(photos):
    x = torch.nn.functional.interpolate(photos, size=(20, 36))
    assert ViewAugment(None)(x).shape == (3, 3, 20, 36)
    assert ViewAugment(16)(x).shape == (3, 3, 16, 16)
    assert small_image_augs()(x).shape == (3, 3, 32, 32)


def test_grey_images_skip_colour_ops_with_a_warning(photos):
    x = photos.mean(1, keepdim=True)
    aug = simclr_augs(24, rotate=30, solarize_p=0.5)
    with pytest.warns(UserWarning, match='1-channel'): v = aug(x)
    assert v.shape == (3, 1, 24, 24)
    assert aug.skipped == ['saturation jitter', 'hue jitter', 'random grayscale']
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='ViewAugment'); aug(x)   # said once, not every batch


def test_normalisation(photos):
    stats = ([0.4, 0.5, 0.6], [0.2, 0.3, 0.25])
    aug = ViewAugment(None, crop_scale=(1., 1.), crop_ratio=(1., 1.), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0, stats=stats)
    out = aug(photos)
    torch.testing.assert_close(out[:, 2], (photos[:, 2] - 0.6) / 0.25, atol=1e-5, rtol=0)
    torch.testing.assert_close(denormalize(out, stats), photos, atol=1e-5, rtol=0)


@pytest.mark.parametrize('bad, msg', [(lambda x: x * 255, '1/255'), (lambda x: (x * 255).byte(), 'dtype'),
                                      (lambda x: x[0], 'shape'), (lambda x: x - 0.5, r'\[0,1\]')])
def test_bad_input(photos, bad, msg):
    with pytest.raises((ValueError, TypeError), match=msg): simclr_augs(32)(bad(photos))


def test_two_channel_images_rejected(photos):
    with pytest.raises(ValueError, match='channels'): simclr_augs(32)(photos[:, :2])
