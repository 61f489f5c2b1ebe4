"Folds and k-fold out-of-fold pseudo-labels: stratification, coverage, no leakage, resume after a kill, bad input"
import os, numpy as np, pandas as pd, pytest, torch
from fastai.learner import Learner
import fastai.callback.progress  # no_bar
from self_supervised_fa.data.sample import load_sample_df, subsample_per_class, sample_dls, ONEHOT_COLS, CLASSES
from self_supervised_fa.labels.pseudo_label import *
from helpers import tiny_cnn


@pytest.fixture(scope='module')
def small(): return subsample_per_class(load_sample_df('train'), 6)

class Recorder:
    "learner_fn that records what each fold's model trains on (read back from its DataLoaders) and can die on a call"
    def __init__(self, die_on=None): self.trained, self.calls, self.die_on = [], 0, die_on
    def __call__(self, trn, val):
        self.calls += 1
        learn = Learner(sample_dls(trn, val, bs=16), tiny_cnn())
        self.trained.append((set(learn.dls.train.items.image_id), set(val.image_id)))
        return learn
    def fit(self, learn):
        if self.die_on is not None and self.calls == self.die_on + 1: raise KeyboardInterrupt('killed in training')
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)


def test_folds_stratified_label_and_onehot():
    df = load_sample_df('train')
    a = assign_folds(df, 5, 'label', seed=3)
    b = assign_folds(df, 5, ONEHOT_COLS, seed=3, classes=CLASSES)
    assert a.fold.tolist() == b.fold.tolist() and a.shape[1] == df.shape[1] + 1
    counts = pd.crosstab(a.label, a.fold)
    expected = df.label.value_counts().sort_index().values[:, None] / 5
    assert (abs(counts.values - expected) < 1).all()  # each class split evenly across folds
    assert (a.fold.value_counts().values >= len(df)//5 - 5).all()
    assert assign_folds(df, 5, seed=4).fold.tolist() != a.fold.tolist()  # the seed matters
    pp = pd.DataFrame({'image_id': list('abcdefgh'), 'healthy': [1, 0]*4, 'rust': [0, 1]*4})  # Plant Pathology layout
    assert sorted(assign_folds(pp, 2, ['healthy', 'rust']).groupby('fold').healthy.sum()) == [2, 2]

def test_folds_errors():
    df = subsample_per_class(load_sample_df('train'), 5)
    df.loc[df.index[df.label == 7][:3], 'label'] = 11  # class 11 gets 3 items, class 7 keeps 2
    with pytest.warns(UserWarning, match=r"2 class\(es\) have fewer items than the 4 folds \(11: 3, 7: 2\)"): f = assign_folds(df, 4)
    assert f[f.label == 7].fold.nunique() == 2 and f.fold.nunique() == 4    # the small class folded anyway
    with pytest.raises(ValueError, match=r"every class has fewer than n_folds=6.*n_folds <= 5"): assign_folds(df, 6)
    bad = df.copy(); bad.loc[bad.index[0], ONEHOT_COLS[:2]] = 1
    with pytest.raises(ValueError, match='not one-hot'): assign_folds(bad, 2, ONEHOT_COLS)
    with pytest.raises(KeyError, match='nope'): assign_folds(df, 2, 'nope')

def test_oof_coverage_no_leakage_and_resume(small, tmp_path):
    rec = Recorder(die_on=2)  # killed inside fold 2's training
    with pytest.raises(KeyboardInterrupt): kfold_pseudo_labels(small, tmp_path, 4, learner=FoldLearner(learner_fn=rec, fit_fn=rec.fit))
    done = {f: os.stat(tmp_path/f).st_mtime_ns for f in ['fold_0.csv', 'fold_1.csv']}
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith('fold_') and 'trained' not in f) == list(done)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]  # nothing half-written
    rec2 = Recorder()
    oof = kfold_pseudo_labels(small, tmp_path, 4, learner=FoldLearner(learner_fn=rec2, fit_fn=rec2.fit))
    assert rec2.calls == 2                                             # only folds 2 and 3 were trained again
    assert {f: os.stat(tmp_path/f).st_mtime_ns for f in done} == done  # finished folds untouched
    # coverage: every item predicted exactly once, in the input's order, with its fold and given label
    assert oof.image_id.tolist() == small.image_id.tolist() and oof.image_id.is_unique
    folds = pd.read_csv(tmp_path/'folds.csv', dtype={'image_id': str})
    assert oof.fold.tolist() == folds.fold.tolist() and oof.label.tolist() == small.label.tolist()
    # no leakage: each model trained on exactly the other folds, never on what it predicted
    for k, (trained, held) in enumerate(rec.trained[:2] + rec2.trained):
        pred_k = set(oof.image_id[oof.fold == k])
        assert held == pred_k and not trained & pred_k and trained | pred_k == set(small.image_id)
        assert set(pd.read_csv(tmp_path/f'fold_{k}_trained.csv', dtype=str).image_id) == trained
    p = oof[[f'prob_{c}' for c in CLASSES]].values
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (oof.pred.values == p.argmax(1)).all()
    assert pd.read_csv(tmp_path/'oof.csv', dtype={'image_id': str}).equals(oof)
    rec3 = Recorder()  # a third run recomputes nothing
    assert kfold_pseudo_labels(small, tmp_path, 4, learner=FoldLearner(learner_fn=rec3, fit_fn=rec3.fit)).equals(oof) and rec3.calls == 0

def test_leaky_learner_and_changed_folds_refused(small, tmp_path):
    leaky = lambda trn, val: Learner(sample_dls(pd.concat([trn, val]), val, bs=16), tiny_cnn())
    with pytest.raises(RuntimeError, match='trains on held-out items'):
        kfold_pseudo_labels(small, tmp_path, 3, learner=FoldLearner(learner_fn=leaky, fit_fn=lambda l: None))
    assert not (tmp_path/'fold_0.csv').exists()
    with pytest.raises(ValueError, match='another fold assignment'):
        kfold_pseudo_labels(small, tmp_path, 3, seed=1, learner=FoldLearner(learner_fn=leaky, fit_fn=lambda l: None))

def test_default_timm_learner_and_missing_images(small, tmp_path):
    sub = subsample_per_class(small, 2)
    oof = kfold_pseudo_labels(sub, tmp_path/'ok', 2, learner=FoldLearner(arch='test_resnet', dls_kwargs=dict(bs=8), epochs=1))
    assert oof.image_id.tolist() == sub.image_id.tolist() and set(oof.fold) == {0, 1}
    bad = pd.concat([sub, sub.iloc[:4].assign(image_id=['nope_1', 'nope_2', 'nope_3', 'nope_4'])])
    with pytest.raises(FileNotFoundError, match=r"4 image file\(s\) missing.*nope_1"):
        kfold_pseudo_labels(bad, tmp_path/'bad', 2, learner=FoldLearner(arch='test_resnet'))
    assert not (tmp_path/'bad').exists()  # failed before anything was written
    with pytest.raises(ValueError, match='duplicated'): kfold_pseudo_labels(pd.concat([sub, sub]), tmp_path/'dup', 2, learner=FoldLearner(arch='x'))
