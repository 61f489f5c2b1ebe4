"""Mixed precision and callback order across the library: the batch-replacing callbacks run before fastai's
MixedPrecision; pretext and label losses in float32 from bf16 inputs, gradients close to float32's; SoftLabelCallback
and PLCCallback learn under CPU bf16 autocast."""
import warnings
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.learner import Learner, CastToTensor
from fastai.callback.fp16 import MixedPrecision
import fastai.callback.schedule, fastai.callback.progress
from self_supervised_fa.data.sample import sample_dls, load_sample_df, subsample_per_class
from self_supervised_fa.labels.noise import add_label_noise
from self_supervised_fa.augment.views import small_image_augs
from self_supervised_fa.core.callback import ReplaceBatchCallback
from self_supervised_fa.siamese.simclr import SimCLRCallback, create_simclr_model
from self_supervised_fa.pretext.rotnet import RotNetCallback, create_rotnet_model
from self_supervised_fa.pretext.inpaint import InpaintCallback
from self_supervised_fa.pretext.pixel_loss import MaskedMSELoss, MaskedL1Loss
from self_supervised_fa.labels.soft_label import SoftLabelCallback, SoftTargetCrossEntropy, ItemTargetCallback
from self_supervised_fa.labels.plc import PLCCallback
from helpers import CPUBf16Callback, grad_agreement

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel', 'ignore:.*CUDA is not available')


def test_batch_replacing_callbacks_are_ordered_before_mixed_precision():
    for cls in (ReplaceBatchCallback, SimCLRCallback, RotNetCallback, InpaintCallback):
        assert CastToTensor.order > cls.order, cls    # the new batch is then cast to plain tensors and autocast like any other
    assert ItemTargetCallback.order < CastToTensor.order


class _ProbeMP(MixedPrecision):
    "fastai's MixedPrecision, recording the batch it sees when it enters autocast"
    def __init__(self, *a, **k): super().__init__(*a, **k); self.seen = []
    def before_batch(self):
        self.seen.append([tuple(x.shape) for x in self.xb]); super().before_batch()


@pytest.mark.parametrize('make', ['simclr', 'rotnet'])
def test_mixed_precision_sees_the_replaced_batch(make):
    dls = sample_dls(n_per_class=2, valid_df=load_sample_df('test').iloc[:8], bs=8)
    if make == 'simclr': model, cb = create_simclr_model('test_resnet', hidden_size=16, projection_size=8, n_in=1), SimCLRCallback(small_image_augs(28))
    else: model, cb = create_rotnet_model('test_resnet', n_in=1), RotNetCallback(all_rotations=True)
    probe = _ProbeMP(amp_mode='bf16')
    learn = Learner(dls, model, cbs=[probe, cb], loss_func=nn.CrossEntropyLoss())   # given in any order: sorted by `order`
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore'); learn.fit(1)
    want = [(8, 1, 28, 28)] * 2 if make == 'simclr' else [(32, 1, 28, 28)]   # two views / four rotations of 8 digits
    assert probe.seen and all(s == want for s in probe.seen)


@pytest.mark.parametrize('loss', [MaskedMSELoss(), MaskedL1Loss(), SoftTargetCrossEntropy()])
def test_pixel_and_label_losses_under_bf16(loss):
    torch.manual_seed(0)
    if isinstance(loss, SoftTargetCrossEntropy):
        args32 = [torch.randn(32, 10, requires_grad=True), torch.softmax(torch.randn(32, 10), 1)]
    else:
        args32 = [torch.randn(8, 3, 16, 16, requires_grad=True), torch.randn(8, 3, 16, 16), (torch.rand(8, 1, 16, 16) > 0.5).float()]
    l32 = loss(*args32); g32 = torch.autograd.grad(l32, args32[0])
    a16 = args32[0].detach().bfloat16().requires_grad_()
    with torch.autocast('cpu', torch.bfloat16): l16 = loss(a16, *[t.bfloat16() for t in args32[1:]])
    g16 = torch.autograd.grad(l16, a16)
    assert l16.dtype == torch.float32 and abs(l16.item() - l32.item()) <= 0.02 * abs(l32.item())
    cos, rel = grad_agreement(g32, [g16[0].float()])
    assert cos > 0.99 and rel < 0.1, (cos, rel)


def _tiny_cnn(n_out=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_out))


@pytest.mark.parametrize('which', ['soft_label', 'plc'])
def test_label_callbacks_learn_under_bf16(which):
    torch.manual_seed(0)
    trn = add_label_noise(subsample_per_class(load_sample_df('train'), 20), 0.2, seed=0)
    dls = sample_dls(trn, subsample_per_class(load_sample_df('test'), 10), bs=25)
    if which == 'soft_label':
        p = pd_probs(trn)
        cb = SoftLabelCallback(p, w=0.5)
    else: cb = PLCCallback(warmup=1, theta=0.3)
    learn = Learner(dls, _tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=[cb, CPUBf16Callback()])
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()[0]; learn.fit_one_cycle(4, 1e-2); after = learn.validate()[0]
    assert np.isfinite(after) and after < before, (before, after)


def pd_probs(trn):
    import pandas as pd
    p = pd.DataFrame(np.eye(10)[trn.label_clean.values] * 0.8 + 0.02, columns=[f'prob_{c}' for c in range(10)])
    p.insert(0, 'image_id', trn.image_id.values)
    return p
