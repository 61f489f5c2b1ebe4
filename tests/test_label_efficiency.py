"Label-efficiency helpers on real MNIST sample digits, with a tiny timm body"
import numpy as np, pytest, torch
from self_supervised_fa.data.sample import sample_dls, load_sample_df, subsample_per_class
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.evaluate.label_efficiency import *


@pytest.fixture(scope='module')
def dls():
    return sample_dls(subsample_per_class(load_sample_df('train'), 30), subsample_per_class(load_sample_df('test'), 10), bs=64)


def test_scratch_like_same_shapes_new_weights():
    body = create_timm_body('test_resnet', n_in=1)
    with torch.no_grad():
        for p in body.parameters(): p.add_(1.0)   # as if trained
    s1, s2 = scratch_like(body, seed=1), scratch_like(body, seed=1)
    sd, sd1 = body.state_dict(), s1.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in sd1.items()}
    assert s1.arch == 'test_resnet' and s1.n_in == 1
    conv = [k for k in sd if k.endswith('weight') and sd[k].ndim == 4][0]
    assert not torch.allclose(sd[conv], sd1[conv]) and torch.equal(sd1[conv], s2.state_dict()[conv])
    with pytest.raises(ValueError, match='no `.arch`'): scratch_like(torch.nn.Linear(2, 2))


def test_finetune_leaves_encoder_untouched_and_learns(dls):
    torch.manual_seed(0)
    body = create_timm_body('test_resnet', n_in=1)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    acc = finetune_accuracy(body, subset_dls(dls, np.arange(0, 300, 2), bs=32), epochs=8, lr=1e-2, pretrained=False)
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in before.items())
    assert acc > 0.3   # 150 labelled digits, 8 epochs (0.52-0.59 over 3 seeds): far above chance (10 %)


class _Recorder:
    "An augmentation that inverts the pixels and records the batches it saw (pixels in [0, 1] in and out)"
    def __init__(self): self.seen = []
    def __call__(self, x): self.seen.append(x.clone()); return 1 - x


def test_finetune_aug_on_training_batches_only(dls):
    """`aug` sees every training batch, in [0, 1] and never a validation image, and the network learns from what it
    returns: trained on inverted digits, the classifier does worse on the untouched (upright) validation digits"""
    sub = subset_dls(dls, np.arange(0, 300, 2), bs=32)
    torch.manual_seed(0)   # a fixed initialisation: unseeded, this tiny body reached 0.33-0.62 plain
    body = create_timm_body('test_resnet', n_in=1)
    aug = _Recorder()
    inv = finetune_accuracy(body, sub, epochs=8, lr=1e-2, pretrained=False, aug=aug)
    plain = finetune_accuracy(body, sub, epochs=8, lr=1e-2, pretrained=False)
    n_batches = len(sub.train) * 9   # epochs + freeze_epochs of fit_one_cycle
    assert len(aug.seen) == n_batches and all(x.shape[0] == 32 for x in aug.seen), (len(aug.seen), n_batches)
    assert min(float(x.min()) for x in aug.seen) >= 0 and max(float(x.max()) for x in aug.seen) <= 1
    valid = torch.cat([x for x, _ in sub.valid])
    assert not any(x.shape == valid[:len(x)].shape and torch.equal(x, valid[:len(x)]) for x in aug.seen)
    assert plain > 0.3 and inv < plain - 0.2, (plain, inv)   # measured 0.52 vs 0.11 (chance)


def test_label_efficiency_table_and_errors(dls):
    torch.manual_seed(0)
    a, b = create_timm_body('test_resnet', n_in=1), create_timm_body('test_resnet', n_in=1)
    df = label_efficiency({'a': a, 'b': b}, dls, budgets=[1, 0.5], methods=('knn', 'linear'), progress=False, probe=Probe(k=20))
    assert list(df.encoder) == ['a', 'a', 'b', 'b', 'from scratch', 'from scratch']
    assert list(df.labels) == [1, '50%'] * 3 and list(df.n_train) == [10, 150] * 3
    assert list(df.knn_k) == [10, 20] * 3   # k capped at the number of labelled items
    assert df[['knn_top1', 'linear']].apply(lambda c: c.between(0, 1)).all().all()
    with pytest.raises(ValueError, match='unknown methods'): label_efficiency(a, dls, methods=('svm',))
    with pytest.raises(ValueError, match='no encoder given'): label_efficiency({}, dls, progress=False)
    alone = label_efficiency({}, dls, budgets=[1, 0.5], scratch=b, methods=('knn',), progress=False, probe=Probe(k=20))   # a baseline by itself
    assert list(alone.encoder) == ['from scratch'] * 2 and list(alone.knn_top1) == list(df.knn_top1[df.encoder == 'b'])
    with pytest.raises(ValueError, match='leaves class'): label_efficiency(a, dls, budgets=[0.01], methods=('knn',), progress=False)


def test_probe_head_is_the_linear_probe_then_fine_tunes(dls):
    """LP-FT: before any step, body + `probe_head` predicts what `linear_probe` predicts (same accuracy on the test
    digits, up to one float32 tie); fine-tuning then changes the weights and the head starts trained, not random"""
    from self_supervised_fa.evaluate.embeddings import get_embeddings
    from self_supervised_fa.evaluate.probes import linear_probe
    torch.manual_seed(0)
    body = create_timm_body('test_resnet', n_in=1)
    sub = subset_dls(dls, np.arange(0, 300, 2), bs=32)
    trf, trl = get_embeddings(body, sub.train, progress=False)
    tef, tel = get_embeddings(body, sub.valid, progress=False)
    probe = linear_probe(trf, trl, tef, tel)
    start = finetune_accuracy(body, sub, epochs=0, pretrained=True, freeze_epochs=0, head='probe')
    assert abs(start - probe) <= 1 / len(tel) + 1e-9 and probe > 0.3, (start, probe)
    head = probe_head(body, sub.train, 10)
    logits = head(tef)
    assert logits.shape == (len(tel), 10) and (logits.argmax(1) == tel).float().mean() == pytest.approx(probe, abs=1 / len(tel) + 1e-9)
    tuned = finetune_accuracy(body, sub, epochs=4, lr=1e-3, pretrained=True, freeze_epochs=0, head='probe')
    assert tuned != start   # the body and head did train
    with pytest.raises(ValueError, match="head='probe'"): finetune_accuracy(body, sub, pretrained=False, head='probe')
    with pytest.raises(ValueError, match="'fastai'"): finetune_accuracy(body, sub, head='lpft')
    with pytest.raises(ValueError, match='FineTune.head'): label_efficiency(body, dls, budgets=[5], progress=False, finetune=FineTune(head='lpft'))
    few = subset_dls(dls, np.flatnonzero(np.array([int(y) for _, y in dls.train_ds]) < 9), bs=32)   # no item of class 9
    with pytest.raises(ValueError, match=r'class\(es\) \[9\]'): probe_head(body, few.train, 10)


def test_finetune_does_not_depend_on_what_ran_before(dls):
    "The same seed gives the same fine-tuning however much of the global random state earlier work used (loader shuffling included)"
    import random
    body, sub = create_timm_body('test_resnet', n_in=1), subset_dls(dls, np.arange(0, 300, 2), bs=32)
    a = finetune_accuracy(body, sub, epochs=2, lr=1e-2, pretrained=False, seed=3)
    for _ in range(7): random.random(); torch.rand(3); np.random.rand()
    b = finetune_accuracy(body, sub, epochs=2, lr=1e-2, pretrained=False, seed=3)
    c = finetune_accuracy(body, sub, epochs=2, lr=1e-2, pretrained=False, seed=4)
    assert a == b and c != a, (a, b, c)
