"Super-resolution: the input is the block-mean image enlarged back, size errors, training and transfer"
import numpy as np, pytest, torch, torch.nn.functional as F
from PIL import Image
from self_supervised_fa.superres import *
from self_supervised_fa.pretext.pixel_loss import MaskedMSELoss
from helpers import PRECISIONS, tiny_dls, pretrain_and_transfer


def test_input_is_degraded_target():
    x = tiny_dls().one_batch()[0]
    inp, targ = SuperResCallback(scale=2, mode='nearest').make_batch(x)
    assert torch.equal(targ, x) and inp.shape == x.shape
    means = x.reshape(-1, 1, 14, 2, 14, 2).mean((3, 5))                      # block means, by reshaping
    torch.testing.assert_close(inp, means.repeat_interleave(2, 2).repeat_interleave(2, 3))
    inp, _ = SuperResCallback(scale=4).make_batch(x)
    assert inp.shape == x.shape and not torch.equal(inp, x)


def test_bilinear_matches_pil():
    "The enlargement step agrees with PIL's bilinear resize of the block means (up to PIL's 8-bit-free float mode)"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=g)
    small = x.reshape(1, 1, 8, 2, 8, 2).mean((3, 5))[0, 0].numpy()
    ref = np.asarray(Image.fromarray(small.astype(np.float32), mode='F').resize((16, 16), Image.BILINEAR))
    np.testing.assert_allclose(degrade(x, 2)[0, 0].numpy(), ref, atol=1e-5)


def test_commutes_with_normalisation():
    x, m, s = torch.rand(2, 3, 12, 12), torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1) + 0.5
    for mode in ('nearest', 'bilinear', 'bicubic'):
        torch.testing.assert_close(degrade((x - m) / s, 3, mode), (degrade(x, 3, mode) - m) / s)


def test_bad_input():
    with pytest.raises(ValueError, match='at least 8x8'): SuperResCallback(scale=4)._make(torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match='scale'): SuperResCallback(scale=1)
    with pytest.raises(ValueError, match='mode'): SuperResCallback(mode='lanczos')


@PRECISIONS
def test_superres_trains_and_transfers(tmp_path, precision):
    dls = tiny_dls()
    model = create_superres_model('test_resnet', n_in=1, img_size=28)
    before, after = pretrain_and_transfer(dls, model, SuperResCallback(), MaskedMSELoss(), tmp_path, epochs=2, lr=3e-3, precision=precision)
    xv = torch.cat([b[0] for b in dls.valid])
    baseline = F.mse_loss(degrade(xv), xv).item()
    assert abs(before[0] - baseline) < 1e-4      # the residual model starts at the bilinear baseline ...
    assert after[0] < baseline                   # ... and beats it
