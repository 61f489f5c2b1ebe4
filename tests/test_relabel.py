"The relabel CSV: written from a suspect table, read back strictly, applied to a DataFrame and by SoftLabelCallback"
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.progress  # no_bar
from self_supervised_fa.data.sample import load_sample_df, subsample_per_class, sample_dls, ONEHOT_COLS, CLASSES
from self_supervised_fa.labels.relabel import *
from self_supervised_fa.labels.soft_label import SoftLabelCallback, SoftTargetCrossEntropy, blend_targets


def tiny_cnn(n_out=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out))

class TargetSpy(Callback):
    order = 50
    def __init__(self): self.targs = []
    def before_batch(self):
        if self.training: self.targs.append(self.yb[0].detach().clone())

def suspects(df, ids, suggested):
    "A suspect table as review.rank_suspects makes it, for the rows `ids`"
    g = df.set_index('image_id').label
    return pd.DataFrame({'image_id': ids, 'given': g[ids].values, 'suggested': suggested, 'score': np.linspace(0.9, 0.5, len(ids))})


def edit(fn, actions, labels=None):
    f = pd.read_csv(fn, dtype=str, keep_default_na=False)
    f['action'] = actions
    if labels is not None: f['new_label'] = labels
    f.to_csv(fn, index=False)


def test_round_trip_changes_exactly_the_edited_items(tmp_path):
    "Write the file, edit it as a reviewer would, apply it: to the DataFrame, and through SoftLabelCallback to the targets"
    trn = subsample_per_class(load_sample_df('train'), 10)
    tst = subsample_per_class(load_sample_df('test'), 2)
    ids = trn.image_id.iloc[[4, 11, 27, 50, 63, 98]].tolist()
    given = trn.set_index('image_id').label[ids].to_numpy()
    new = (given + 3) % 10                                    # a different class for every row
    fn = write_relabel(tmp_path/'relabel.csv', suspects(trn, ids, (given + 1) % 10))
    edit(fn, ['relabel', 'drop', 'keep', 'relabel', 'drop', 'keep'], [str(v) for v in new])   # the reviewer overrides the suggestion
    # 1. the DataFrame: two rows gone, two relabelled (label and one-hot columns), everything else identical
    out = apply_relabel(trn, fn, classes=CLASSES, onehot_cols=ONEHOT_COLS)
    assert set(trn.image_id) - set(out.image_id) == {ids[1], ids[4]}
    changed = out.set_index('image_id').label != trn.set_index('image_id').label.loc[out.image_id]
    assert set(changed[changed].index) == {ids[0], ids[3]}
    assert out.set_index('image_id').label[ids[0]] == new[0] and out.set_index('image_id').label[ids[3]] == new[3]
    assert (out[ONEHOT_COLS].to_numpy().argmax(1) == out.label.to_numpy()).all() and out.label.dtype == trn.label.dtype
    same = trn[~trn.image_id.isin([ids[0], ids[1], ids[3], ids[4]])]
    pd.testing.assert_frame_equal(out.loc[same.index], same)
    # 2. the training targets: SoftLabelCallback(relabel=the same file), with and without pseudo-labels
    dls = sample_dls(trn, tst, bs=20)   # 100 items, 2 dropped: 98 -> 4 batches of 20 (drop_last)
    items = dls.train.items.reset_index(drop=True)
    rng = np.random.default_rng(0)
    probs = pd.DataFrame(rng.dirichlet(np.ones(10), len(items)), columns=[f'prob_{c}' for c in range(10)]).assign(image_id=items.image_id)
    for p in (probs, None):
        spy = TargetSpy()
        cb = SoftLabelCallback(p, w=0.4, relabel=fn)
        learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=[cb, spy])
        with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-3)
        y = torch.tensor(items.label.values)
        base = blend_targets(y, torch.tensor(p.drop(columns='image_id').values, dtype=torch.float32), 0.4) if p is not None else F.one_hot(y, 10).float()
        exp = base.clone()
        pos = {k: i for i, k in enumerate(items.image_id)}
        for j in (0, 3): exp[pos[ids[j]]] = F.one_hot(torch.tensor(int(new[j])), 10).float()
        seen = torch.cat(spy.targs)
        match = torch.cdist(seen, exp).argmin(1)
        torch.testing.assert_close(seen, exp[match])                       # each target is its item's edited target
        assert not {pos[ids[1]], pos[ids[4]]} & set(match.tolist())         # dropped: never in a batch, in 3 epochs
        assert len(cb.train_dl) == 98 // 20 and len(seen) == 3 * 4 * 20
        diff = (cb.table != base).any(1).nonzero()[:, 0].tolist()
        assert sorted(diff) == sorted(i for i in (pos[ids[0]], pos[ids[3]]) if not torch.equal(base[i], exp[i]))  # only the relabelled
        assert torch.equal(learn.get_preds()[1], torch.tensor(dls.valid.items.label.values))   # validation: given labels


def test_reading_is_strict_and_names_line_and_column(tmp_path):
    trn = subsample_per_class(load_sample_df('train'), 3)
    ids = trn.image_id.tolist()
    fn = write_relabel(tmp_path/'r.csv', suspects(trn, ids[:6], [1, 2, 3, 4, 5, 6]))
    good = read_relabel(fn, trn)
    assert good.action.tolist() == ['keep'] * 6 and good.new_label.isna().all()
    cases = [(['relabel'] + ['keep'] * 5, ['11', '', '', '', '', ''], "line 2, column 'new_label': '11' is not a class"),
             (['keep', 'Relabel', 'keep', 'keep', 'keep', 'keep'], ['', '', '', '', '', ''], "line 3, column 'new_label': empty"),
             (['keep', 'keep', 'remove', 'keep', 'keep', 'keep'], None, "line 4, column 'action': 'remove' is not one of keep, relabel, drop"),
             (['keep', 'keep', 'keep', '', 'keep', 'keep'], None, "line 5, column 'action': ''")]
    for actions, labels, msg in cases:
        edit(fn, actions, labels)
        with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')): read_relabel(fn, trn)
    edit(fn, ['keep'] * 6, [str(v) for v in [1, 2, 3, 4, 5, 6]])
    f = pd.read_csv(fn, dtype=str, keep_default_na=False)
    f.loc[2, 'image_id'] = 'mnist_9999'; f.to_csv(fn, index=False)
    with pytest.raises(ValueError, match="line 4, column 'image_id': 'mnist_9999' is not a training item"): read_relabel(fn, trn)
    f.loc[2, 'image_id'] = ids[0]; f.to_csv(fn, index=False)
    with pytest.raises(ValueError, match=r"'%s' is listed on lines \[2, 4\]" % ids[0]): read_relabel(fn, trn)
    stale = trn.assign(label=trn.label.where(trn.image_id != ids[1], (trn.label + 1) % 10))
    f.loc[2, 'image_id'] = ids[2]; f.to_csv(fn, index=False)
    with pytest.raises(ValueError, match="line 3, column 'given'.*written for other labels"): read_relabel(fn, stale)
    with pytest.raises(ValueError, match=r"no column\(s\) \['action'\]"): read_relabel(f.drop(columns='action'), trn)
    with pytest.raises(FileNotFoundError): read_relabel(tmp_path/'none.csv', trn)
    many = pd.DataFrame({'image_id': ids[:25], 'action': ['oops'] * 25, 'new_label': ''})
    with pytest.raises(ValueError, match='(?s)25 problem.*and 5 more'): read_relabel(many, trn)
    # the callback reads the file against its training items before training
    dls = sample_dls(trn, subsample_per_class(load_sample_df('test'), 1), bs=10)
    bad = pd.DataFrame({'image_id': ['nobody'], 'action': ['drop'], 'new_label': ['']})
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=SoftLabelCallback(relabel=bad))
    with pytest.raises(ValueError, match="'nobody' is not a training item"): learn.fit(1)
    with pytest.raises(ValueError, match='needs probs, a relabel file, or both'): SoftLabelCallback()


def test_string_classes_and_validation_items(tmp_path):
    trn = subsample_per_class(load_sample_df('train'), 3).assign(label=lambda d: d.label.map(lambda v: f'c{v}'))
    rel = pd.DataFrame({'image_id': trn.image_id[:3], 'action': ['relabel', 'drop', 'relabel'], 'new_label': ['c9', '', 'c0']})
    out = apply_relabel(trn, rel)
    assert out.label.tolist()[:2] == ['c9', 'c0'] and len(out) == len(trn) - 1
    with pytest.raises(ValueError, match="'9' is not a class"): apply_relabel(trn, rel.assign(new_label=['9', '', 'c0']))
    # rows naming validation items: the callback warns and leaves validation alone
    tst = subsample_per_class(load_sample_df('test'), 1)
    dls = sample_dls(subsample_per_class(load_sample_df('train'), 3), tst, bs=10)
    rel = pd.DataFrame({'image_id': [tst.image_id.iloc[0]], 'action': ['drop'], 'new_label': ['']})
    learn = Learner(dls, tiny_cnn(), loss_func=SoftTargetCrossEntropy(), cbs=SoftLabelCallback(relabel=rel))
    with pytest.warns(UserWarning, match='validation items'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
