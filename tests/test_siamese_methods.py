"""Every siamese method on the shared core: losses against independent implementations (plain formulas, lightly), bf16,
teachers (closed-form EMA, no gradient, saved and loaded with the model), MoCo's queue, bad input"""
import copy, math, warnings
import numpy as np, pytest, torch, torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.schedule, fastai.callback.progress
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.augment.views import small_image_augs
from self_supervised_fa.siamese.teacher import momentum_at
from self_supervised_fa.siamese.model import SiameseModel
from self_supervised_fa.siamese.simclr import NTXentLoss, create_simclr_model, SimCLRCallback
from self_supervised_fa.siamese.barlow_twins import BarlowTwinsLoss, create_barlow_twins_model, BarlowTwinsCallback
from self_supervised_fa.siamese.byol import BYOLLoss, create_byol_model, BYOLCallback
from self_supervised_fa.siamese.simsiam import NegativeCosineLoss, create_simsiam_model, SimSiamCallback
from self_supervised_fa.siamese.moco import InfoNCELoss, create_moco_v2_model, MoCoV2Callback, create_moco_v3_model, MoCoV3Callback
from self_supervised_fa.siamese.vicreg import VICRegLoss, create_vicreg_model, VICRegCallback
from self_supervised_fa.siamese.swav import SwAVLoss, create_swav_model, SwAVCallback
from self_supervised_fa.siamese.dino import DINOLoss, create_dino_model, DINOCallback
from self_supervised_fa.app.registry import METHODS as REGISTRY
from helpers import CPUBf16Callback, grad_agreement

pytestmark = pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')
AUG = dict(crop_scale=(0.4, 1.), flip_p=0.)
SMALL = dict(hidden_size=64, projection_size=32, n_in=1)


@pytest.fixture(scope='module')
def dls(): return sample_dls(n_per_class=8, valid_df=load_sample_df('test').iloc[:32], bs=16)


# --- losses against independent implementations -----------------------------------------------------------------

def _views(n, b=8, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=dtype).requires_grad_() for _ in range(n)]

def _check(ours, ref, inputs, tol=1e-10):
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    for g, gr in zip(torch.autograd.grad(ours, inputs, allow_unused=True), torch.autograd.grad(ref, inputs, allow_unused=True)):
        if gr is None: assert g is None or g.abs().max() == 0
        else: torch.testing.assert_close(g, gr, atol=tol, rtol=tol)


def test_byol_loss_is_the_squared_distance_of_unit_vectors():
    p0, p1, t0, t1 = _views(4)
    unit = lambda v: v / v.norm(dim=1, keepdim=True)
    ref = sum(((unit(p) - unit(t.detach())) ** 2).sum(1).mean() for p, t in [(p0, t1), (p1, t0)]) / 2
    _check(BYOLLoss()((p0, p1), (t0, t1)), ref, [p0, p1, t0, t1])
    # three views, two targets (multi-crop): the pairs (0,1), (1,0), (2,0), (2,1)
    p2 = _views(1, seed=3)[0]
    ref3 = sum(((unit(p) - unit(t.detach())) ** 2).sum(1).mean() for p, t in [(p0, t1), (p1, t0), (p2, t0), (p2, t1)]) / 4
    _check(BYOLLoss()((p0, p1, p2), (t0, t1)), ref3, [p0, p1, p2, t0, t1])


def test_negative_cosine_matches_lightly():
    lightly_loss = pytest.importorskip('lightly.loss')
    p0, p1, z0, z1 = _views(4)
    ncs = lightly_loss.NegativeCosineSimilarity()
    _check(NegativeCosineLoss()((p0, p1), (z0, z1)), 0.5 * (ncs(p0, z1.detach()) + ncs(p1, z0.detach())), [p0, p1, z0, z1])
    _check(BYOLLoss()((p0, p1), (z0, z1)), 2 + 2 * 0.5 * (ncs(p0, z1.detach()) + ncs(p1, z0.detach())), [p0, p1, z0, z1])


def test_infonce_with_queue_matches_formula_and_lightly():
    q, k = _views(2, b=5, d=4)
    neg = F.normalize(torch.randn(11, 4, dtype=torch.float64), dim=1)
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    ref = torch.stack([math.log(1) - (qn[b] @ kn[b] / 0.2) + torch.logsumexp(torch.cat([(qn[b] @ kn[b])[None], neg @ qn[b]]) / 0.2, 0)
                       for b in range(5)]).mean()
    _check(InfoNCELoss(0.2)(q, k, neg), ref, [q, k])
    lightly_loss = pytest.importorskip('lightly.loss')
    lf = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(11, 4)).double()
    lf.memory_bank.bank = neg.clone()           # the same negatives
    _check(InfoNCELoss(0.2)(q, k.detach(), neg), lf(q, k.detach()), [q])


def test_infonce_in_batch_is_moco_v3_ctr():
    q, k = _views(2, b=6, d=5)
    logits = F.normalize(q, dim=1) @ F.normalize(k.detach(), dim=1).t() / 0.3
    ref = torch.stack([-torch.log_softmax(logits[b], 0)[b] for b in range(6)]).mean()
    _check(InfoNCELoss(0.3)(q, k), ref, [q, k])


def test_vicreg_matches_formula_and_lightly():
    za, zb = _views(2, b=16, d=5)
    def terms(z):
        std = torch.sqrt(z.var(0) + 1e-4)
        c = torch.stack([torch.stack([((z[:, i] - z[:, i].mean()) * (z[:, j] - z[:, j].mean())).sum() / (len(z) - 1)
                                      for j in range(5)]) for i in range(5)])
        return torch.clamp(1 - std, min=0).mean(), sum(c[i, j] ** 2 for i in range(5) for j in range(5) if i != j) / 5
    (va, ca), (vb, cb) = terms(za), terms(zb)
    ref = 25 * ((za - zb) ** 2).mean() + 25 * (va + vb) / 2 + (ca + cb)
    _check(VICRegLoss()(za, zb), ref, [za, zb])
    lightly_loss = pytest.importorskip('lightly.loss')
    _check(VICRegLoss()(za, zb), lightly_loss.VICRegLoss()(za, zb), [za, zb], tol=1e-8)


# --- bf16: every loss computes in float32 from bf16 inputs, with gradients close to float32's ---------------------

LOSSES = {
    'ntxent': (lambda z: NTXentLoss(0.2)(z[0], z[1]), 2),
    'barlow_twins': (lambda z: BarlowTwinsLoss()(z[0], z[1]), 2),
    'byol': (lambda z: BYOLLoss()((z[0], z[1]), (z[2], z[3])), 4),
    'simsiam': (lambda z: NegativeCosineLoss()((z[0], z[1]), (z[2], z[3])), 4),
    'moco_v2': (lambda z: InfoNCELoss(0.2)(z[0], z[1], F.normalize(z[2].detach().float(), dim=1)), 3),
    'moco_v3': (lambda z: InfoNCELoss(0.2)(z[0], z[1]), 2),
    'vicreg': (lambda z: VICRegLoss()(z[0], z[1]), 2),
    'swav': (lambda z: SwAVLoss()(z[:4], n_global=2), 4),                        # 2 global + 2 local crops
    'dino': (lambda z: DINOLoss()(z[:4], z[4:], z[4].detach().mean(0, keepdim=True), 0.04), 6),
}

@pytest.mark.parametrize('name', list(LOSSES))
def test_losses_under_cpu_bf16_autocast(name):
    "Inputs as a bf16 network would give them, under autocast: finite float32 loss within 2 % of float32's, gradients cos > 0.99"
    f, n = LOSSES[name]
    z32 = [t.float().detach().requires_grad_() for t in _views(n, b=32, d=16, seed=1)]
    l32 = f(z32); g32 = torch.autograd.grad(l32, z32, allow_unused=True)
    z16 = [t.detach().bfloat16().requires_grad_() for t in z32]
    with torch.autocast('cpu', torch.bfloat16): l16 = f(z16)
    g16 = torch.autograd.grad(l16, z16, allow_unused=True)
    assert l16.dtype == torch.float32 and torch.isfinite(l16)
    assert abs(l16.item() - l32.item()) <= 0.02 * abs(l32.item()) + 1e-3, (l16.item(), l32.item())
    pairs = [(a, b.float()) for a, b in zip(g32, g16) if a is not None]
    assert all(b.dtype == torch.float32 for _, b in pairs)
    cos, rel = grad_agreement([a for a, _ in pairs], [b for _, b in pairs])
    assert cos > 0.99 and rel < 0.1, (cos, rel)


# --- training: each method through fit_one_cycle, in float32 and under bf16 autocast ------------------------------

# the methods come from the registry: a siamese method registered there is tested here too. Only the test sizes are ours
SIAMESE = [n for n, m in REGISTRY.items() if m.kind == 'siamese']
TINY = dict(simsiam=dict(pred_hidden_size=16), moco_v2=dict(queue_size=64), swav=dict(n_prototypes=20),
            dino=dict(out_dim=64, bottleneck_size=16, projection_size=None))
TINY_CB = dict(simclr=dict(temperature=0.2), moco_v2=dict(momentum=0.99))
METHODS = {n: (REGISTRY[n].factory, REGISTRY[n].callback, TINY.get(n, {}), TINY_CB.get(n, {})) for n in SIAMESE}

def _learner(name, dls, arch='test_resnet', cbs=(), **model_kw):
    make, Cb, mk, ck = METHODS[name]
    model = make(arch, **{k: v for k, v in {**SMALL, **mk, **model_kw}.items() if v is not None})
    return Learner(dls, model, cbs=[Cb(small_image_augs(28, **AUG), **ck), *cbs])


@pytest.mark.parametrize('name', list(METHODS))
def test_bf16_fit_learns(name, dls):
    "A short fit_one_cycle under CPU bf16 autocast: finite losses, weights change, teacher (if any) stays float32"
    torch.manual_seed(0)
    learn = _learner(name, dls, cbs=[CPUBf16Callback()])
    w0 = copy.deepcopy(learn.model.encoder.state_dict())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-3)
    assert all(np.isfinite(v[0]) and np.isfinite(v[1]) for v in learn.recorder.values)
    assert any(not torch.equal(v, learn.model.encoder.state_dict()[k]) for k, v in w0.items())
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())


CORE = [n for n in SIAMESE if REGISTRY[n].views is None]   # two views, no multi-crop preset

@pytest.mark.parametrize('name', CORE)
def test_trains_beats_random_and_transfers(name, tmp_path):
    """8 epochs on 320 digits: the loss goes down (MoCo v2: its queue fills with real keys, so its loss is not comparable
    across epochs), the projections do not collapse, the encoder file loads into `classifier_learner` unchanged, and for
    the contrastive methods the kNN top-1 (100 queries) beats the random-weights encoder's. Measured over seeds 0-2:
    SimCLR +0.10 to +0.17, MoCo v2 +0.09, MoCo v3 +0.07 to +0.09 over 0.31-0.34; Barlow Twins, BYOL, SimSiam and VICReg
    +0.00 to +0.12, not separable from the probe's noise at this size: their kNN rise is measured on the whole sample by
    `benchmarks/bench_label_efficiency.py` (kNN per epoch, and against the same network from scratch)"""
    from helpers import fit_and_probe
    from self_supervised_fa.encoders.files import save_encoder
    from self_supervised_fa.encoders.classifier import classifier_learner
    torch.manual_seed(0)
    make, Cb, mk, ck = METHODS[name]
    model = make('test_resnet', **{k: v for k, v in {**SMALL, **mk}.items() if v is not None})
    r = fit_and_probe(model, Cb(small_image_augs(28, **AUG), **ck), epochs=8, lr=1e-2, n_per_class=32, bs=64)
    if name != 'moco_v2': assert r['loss'][-1] < r['loss'][0], r
    if name in ('simclr', 'moco_v2', 'moco_v3'): assert r['knn'] >= r['knn_random'] + 0.03, r
    assert r['std'] > 0.5 / math.sqrt(r['dim']), r            # collapsed: 0; spread over the sphere: 1/sqrt(dim)
    fn = save_encoder(model.encoder, tmp_path/'enc')
    dls = r['learn'].dls
    clf = classifier_learner(dls, 'test_resnet', n_in=1, encoder_path=fn)
    x = dls.one_batch()[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(clf.model.eval().encoder.embed(x), model.encoder.eval().embed(x), atol=1e-5, rtol=1e-5)


# --- teachers ----------------------------------------------------------------------------------------------------

class _Trace(Callback):
    "Teacher parameters before each step; teacher and student parameters after it (after the method's update)"
    order = 20
    def __init__(self): self.before, self.after, self.student, self.m = [], [], [], []
    def before_step(self):
        self.before.append([p.detach().double().clone() for p in self.model.teacher.parameters()])
        assert all(p.grad is None for p in self.model.teacher.parameters())          # the teacher gets no gradient
    def after_step(self):
        self.after.append([p.detach().double().clone() for p in self.model.teacher.parameters()])
        self.student.append([p.detach().double().clone() for m in (self.model.encoder, self.model.projector) for p in m.parameters()])
        self.m.append((self.learn.cbs.filter(lambda c: hasattr(c, 'momentum_now'))[0].momentum_now, self.pct_train))


@pytest.mark.parametrize('name,base,end', [('byol', 0.9, 1.), ('moco_v2', 0.8, None), ('dino', 0.95, 1.)])
def test_teacher_is_the_closed_form_ema(name, base, end, dls):
    torch.manual_seed(0)
    make, Cb, mk, ck = METHODS[name]
    model = make('test_resnet', **{k: v for k, v in {**SMALL, **mk}.items() if v is not None})
    t0 = [p.detach().double().clone() for p in model.teacher.parameters()]
    tr = _Trace()
    learn = Learner(dls, model, cbs=[Cb(small_image_augs(28, **AUG), momentum=base, momentum_end=end), tr])
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-3)
    assert len(tr.m) == 2 * len(dls.train)
    t = t0
    for (m, pct), s in zip(tr.m, tr.student):                                  # t_k = m_k t_{k-1} + (1 - m_k) s_k
        assert m == pytest.approx(momentum_at(pct, base, end))
        t = [m * a + (1 - m) * b for a, b in zip(t, s)]
    for a, b in zip(t, model.teacher.parameters()): torch.testing.assert_close(a, b.double(), atol=1e-6, rtol=1e-5)
    if end is not None: assert tr.m[0][0] == pytest.approx(base) and tr.m[-1][0] > tr.m[0][0]
    else: assert {m for m, _ in tr.m} == {base}


@pytest.mark.parametrize('name', ['byol', 'moco_v2', 'moco_v3'])
def test_teacher_and_queue_saved_and_loaded(name, dls, tmp_path):
    torch.manual_seed(0)
    learn = _learner(name, dls)
    learn.path = tmp_path
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    sd = {k: v.clone() for k, v in learn.model.state_dict().items()}
    assert any(k.startswith('teacher.') for k in sd) and (name != 'moco_v2' or {'queue.keys', 'queue.ptr'} <= set(sd))
    learn.save('ckpt')
    torch.manual_seed(1)
    fresh = _learner(name, dls); fresh.path = tmp_path
    assert any(not torch.equal(v, fresh.model.state_dict()[k]) for k, v in sd.items() if k.startswith(('teacher.', 'queue.')))
    fresh.load('ckpt')
    for k, v in fresh.model.state_dict().items(): assert torch.equal(v, sd[k]), k


def test_teacher_not_in_the_optimiser(dls):
    learn = _learner('byol', dls)
    learn.create_opt()
    opt_params = {id(p) for g in learn.opt.param_groups for p in g['params']}
    assert not opt_params & {id(p) for p in learn.model.teacher.parameters()}
    assert {id(p) for p in learn.model.encoder.parameters()} <= opt_params


# --- MoCo's queue --------------------------------------------------------------------------------------------------

class _QueueSpy(Callback):
    "The keys of each training batch and the queue the loss used"
    order = 20
    def __init__(self): self.seen = []
    def after_loss(self):
        cb = self.learn.cbs.filter(lambda c: isinstance(c, MoCoV2Callback))[0]
        if self.training: self.seen.append((cb.to_queue.clone(), self.model.queue.keys.clone()))   # keys waiting for the step


def test_moco_queue_fifo_and_never_its_own_keys(dls):
    torch.manual_seed(0)
    spy = _QueueSpy()
    learn = _learner('moco_v2', dls, cbs=[spy], queue_size=40)            # 16-key batches: wraps around every 2.5 batches
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    n = len(spy.seen)
    assert int(learn.model.queue.ptr) == n * 16 % 40
    for keys, queue in spy.seen:                                           # the batch's own keys are not among the negatives
        k = F.normalize(keys.float(), dim=1)
        assert not (torch.cdist(k, queue) < 1e-6).any()
    last = torch.cat([F.normalize(k.float(), dim=1) for k, _ in spy.seen[-3:]])[-40:]   # FIFO: the last 40 keys, in order
    ptr = int(learn.model.queue.ptr)
    torch.testing.assert_close(torch.roll(learn.model.queue.keys, -ptr, 0), last)


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,wrong', [('byol', create_simclr_model), ('simsiam', create_simclr_model),
                                        ('moco_v3', create_simsiam_model), ('moco_v2', create_byol_model)])
def test_model_that_does_not_fit_the_method(name, wrong, dls):
    _, Cb, _, ck = METHODS[name]
    model = wrong('test_resnet', **SMALL)
    w0 = copy.deepcopy(model.state_dict())
    learn = Learner(dls, model, cbs=Cb(small_image_augs(28, **AUG), **ck))
    with pytest.raises(ValueError, match=f"create_{name}_model"), learn.no_bar(): learn.fit(1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in w0.items())   # failed before any step


def test_bad_input_errors(dls):
    with pytest.raises(ValueError, match=r'\[0, 1\]'): BYOLCallback(momentum=1.01)
    with pytest.raises(ValueError, match=r'\[0, 1\]'): MoCoV2Callback(momentum=-0.1)
    learn = _learner('moco_v2', dls, queue_size=8)                         # 16 images per batch, 8 queue slots
    with pytest.raises(ValueError, match='queue_size >= 16'), learn.no_bar(): learn.fit(1)
    cb = BYOLCallback(small_image_augs(28)); Learner(dls, create_byol_model('test_resnet', **SMALL), cbs=cb)
    with pytest.raises(ValueError, match='batch of 1'): cb.views(dls.one_batch()[0][:1])
    byol = create_byol_model('test_resnet', **SMALL)
    learn = Learner(dls, byol, cbs=SimCLRCallback(small_image_augs(28)))  # a teacher, but no momentum to move it
    with pytest.raises(ValueError, match='pass momentum='), learn.no_bar(): learn.fit(1)
