"The `ssfa` workflow on the colour folder at a tiny size: every subcommand, resume after a kill, the submission"
import json, os, shutil
import numpy as np, pandas as pd, pytest, torch
from fastai.callback.core import Callback
from safetensors.torch import load_file
import self_supervised_fa.app.workflow as W
import self_supervised_fa.app.pretrain as P
from self_supervised_fa.app.cli import main, build_parser, SUBCOMMANDS
from self_supervised_fa.app.registry import METHODS as PRETRAIN_METHODS
from self_supervised_fa.encoders.files import read_encoder_metadata
from self_supervised_fa.core.checkpoint import CheckpointCallback, checkpoint_epoch
from self_supervised_fa.data.photos import get_colour_competition, PHOTO_CLASSES

TINY = ['--size', '16', '--bs', '32', '--quiet', '--seed', '0']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def comp(small_colour_competition, tmp_path_factory):
    "The small colour folder (one training JPEG truncated) with one test image removed"
    root = tmp_path_factory.mktemp('cli')/'comp'
    shutil.copytree(small_colour_competition, root)
    os.remove(next((root/'images').glob('Test_1.*')))
    return root


def test_help_lists_subcommands_and_shared_flags(capsys):
    with pytest.raises(SystemExit): main(['--help'])
    out = capsys.readouterr().out
    assert all(c in out for c in SUBCOMMANDS)
    for cmd in [c for c in SUBCOMMANDS if c != 'export']:   # export reads no images: ENCODER and --out only
        with pytest.raises(SystemExit): main([cmd, '--help'])
        h = capsys.readouterr().out
        trains = cmd != 'suspects'   # suspects trains nothing: no --epochs or --lr
        for flag in ['--encoder', '--size', '--n-in', '--bs', '--seed', '--out', '--strict', '--cache'] + ['--epochs', '--lr'] * trains:
            assert flag in h, (cmd, flag)
        assert '(default: ' in h
    with pytest.raises(SystemExit): main(['pretrain', '--help'])
    assert '{' + ','.join(PRETRAIN_METHODS) + '}' in capsys.readouterr().out   # --method lists the registry


def test_workflow_end_to_end(comp, tmp_path, capsys):
    out = tmp_path/'run'
    a = ['--out', str(out)] + TINY
    main(['pretrain', str(comp), '--arch', 'test_resnet', '--epochs', '2', '--group-col', 'region', '--include-test'] + a)
    assert 'the 35 test images join pretraining' in capsys.readouterr().out
    enc = out/'encoder_simclr.safetensors'
    meta = read_encoder_metadata(enc)
    rec = meta['recipe']
    assert meta['n_in'] == 3 and rec['size'] == 16 and rec['method'] == 'simclr' and len(rec['stats'][0]) == 3
    assert rec['n_images'] == 9 * 12 - 1 + 9 * 4 - 1          # train + test images, the two bad files skipped
    hist = pd.read_csv(out/'pretrain_simclr'/'history.csv')
    assert len(hist) == 2 and hist.knn_top1.between(0, 1).all() and (out/'pretrain_simclr'/'curves.png').stat().st_size > 1000
    bad = pd.read_csv(out/'bad_files.csv')
    assert sorted(bad.image_id) == ['Test_1', 'Train_10'] and sorted(bad.split) == ['test', 'train']

    df = main(['evaluate', str(comp), '--encoder', str(enc), '--budgets', '2,all', '--eval', 'knn,linear', '--out', str(out), '--quiet'])
    assert sorted(set(df.encoder)) == ['from scratch', 'pretrained'] and df.n_train.tolist()[:1] == [18]
    assert (out/'label_efficiency.png').exists() and pd.read_csv(out/'label_efficiency.csv').shape[0] == 4

    oof = main(['pseudo-label', str(comp), '--encoder', str(enc), '--folds', '3', '--epochs', '1', '--group-col', 'region'] + a)
    items = W.prepare(comp, folder=W.FolderOptions(progress=False, group_col='region')).items
    assert sorted(oof.image_id) == sorted(items.image_id)                          # every checked item exactly once
    folds = oof.merge(items, on='image_id')
    assert folds.groupby('group').fold.nunique().max() == 1                         # grouped
    probs = oof[[f'prob_{c}' for c in PHOTO_CLASSES]].values
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    tp = pd.read_csv(out/'test_probs.csv')
    assert len(tp) == 9 * 4 - 1 and 'Test_1' not in set(tp.image_id)
    per_fold = [pd.read_csv(out/'pseudo_label'/f'fold_{k}_test.csv')[tp.columns[1:-1]].values for k in range(3)]
    np.testing.assert_allclose(tp[tp.columns[1:-1]].values, np.mean(per_fold, 0), atol=1e-6)

    # suspects: the ranked table covers every item once, its scores are rank_suspects' on the same inputs, pictures and relabel.csv
    r = main(['suspects', str(comp), '--oof', str(out/'oof.csv'), '--encoder', str(enc), '--top', '12', '--group-col', 'region',
              '--out', str(out), '--quiet'])
    rev = out/'review'
    table = pd.read_csv(rev/'suspects.csv', dtype={'image_id': str})
    assert sorted(table.image_id) == sorted(items.image_id) and table.score.is_monotonic_decreasing
    from self_supervised_fa.labels.suspects import rank_suspects
    feats = W._embed_items(W.prepare(comp, folder=W.FolderOptions(progress=False, group_col='region')), W.settings(W.prepare(comp, folder=W.FolderOptions(progress=False)), encoder=enc),
                           enc, 64, 0, False)
    ref = rank_suspects(items, probs=pd.read_csv(out/'oof.csv', dtype={'image_id': str}), feats=feats, classes=PHOTO_CLASSES)
    np.testing.assert_allclose(table.score.values, ref.score.values, atol=1e-9)
    assert table.image_id.tolist() == ref.image_id.tolist()
    assert len(r['pages']) == 1 and r['pages'][0].stat().st_size > 5000
    rel = pd.read_csv(rev/'relabel.csv', dtype=str, keep_default_na=False)
    assert rel.image_id.tolist() == table.image_id[:12].tolist() and set(rel.action) == {'keep'}
    # the user edits relabel.csv: drop a training suspect, relabel another and a validation one; train sees exactly that
    split = W.split_valid(W.prepare(comp, folder=W.FolderOptions(progress=False)).items, 0.2, 0).set_index('image_id')
    trn_rows = [i for i, v in enumerate(rel.image_id) if not split.is_valid[v]]
    val_row = next(i for i, v in enumerate(rel.image_id) if split.is_valid[v])
    dropped, moved, held = rel.image_id[trn_rows[0]], rel.image_id[trn_rows[1]], rel.image_id[val_row]
    new_label = next(c for c in PHOTO_CLASSES if c != items.set_index('image_id').label[moved])
    rel.loc[trn_rows[0], 'action'] = 'drop'
    rel.loc[[trn_rows[1], val_row], 'action'], rel.loc[[trn_rows[1], val_row], 'new_label'] = 'relabel', new_label
    rel.to_csv(rev/'relabel.csv', index=False)
    seen = {}
    orig = W.folder_dls
    def spy(items_, *args, **kw): seen['items'] = items_; return orig(items_, *args, **kw)
    W.folder_dls = spy
    try:
        r = main(['train', str(comp), '--encoder', str(enc), '--soft-labels', str(out/'oof.csv'), '--w', '0.5', '--epochs', '1',
                  '--relabel', str(rev/'relabel.csv')] + a)
    finally: W.folder_dls = orig
    got = seen['items'].set_index('image_id')
    assert dropped not in got.index and got.label[moved] == new_label and len(got) == len(items) - 1
    same = items.set_index('image_id').label.drop([dropped, moved])
    rest = got.label.drop(moved)
    assert len(rest) == len(same) and (rest.reindex(same.index) == same).all()       # the validation image kept its given label
    assert got.is_valid.equals(split.is_valid.drop(dropped).reindex(got.index))     # the same split as without the relabel file
    assert f"1 rows of the relabel file drop or change validation images" in capsys.readouterr().out
    sub = pd.read_csv(out/'submission.csv')
    test = pd.read_csv(comp/'test.csv')
    assert sub.image_id.tolist() == test.image_id.tolist()                         # one row per test image, in order
    assert list(sub.columns) == ['image_id'] + PHOTO_CLASSES                        # the competition's column order
    np.testing.assert_allclose(sub[PHOTO_CLASSES].values.sum(1), 1, atol=1e-9)
    row = sub.set_index('image_id').loc['Test_1']                                   # the missing test image: class frequencies
    np.testing.assert_allclose(row.values, items.label.value_counts(normalize=True).reindex(PHOTO_CLASSES).values)
    sc = json.loads((out/'scores.json').read_text())
    vp = pd.read_csv(out/'valid_preds.csv')
    pc = [f'prob_{c}' for c in PHOTO_CLASSES]
    assert sc['accuracy'] == pytest.approx((vp[pc].values.argmax(1) == [PHOTO_CLASSES.index(l) for l in vp.label]).mean(), abs=1e-6)
    from sklearn.metrics import roc_auc_score
    y = np.array([PHOTO_CLASSES.index(l) for l in vp.label])
    ref = np.mean([roc_auc_score(y == c, vp[pc].values[:, c]) for c in range(9) if 0 < (y == c).sum() < len(y)])
    assert sc['roc_auc_mean'] == pytest.approx(ref, abs=1e-6) and sc['mode'] == 'soft labels (w=0.5)'
    assert sc['valid_labels'] == 'given' and set(vp.label) <= set(PHOTO_CLASSES)


def test_grey_rotnet_on_class_folders_and_unlabelled(tmp_path, comp):
    d = W.prepare(comp, folder=W.FolderOptions(progress=False))
    for _, r in d.items.iterrows():   # the same images as class sub-folders
        (tmp_path/'cls'/r.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.fname, tmp_path/'cls'/r.label/os.path.basename(r.fname))
    main(['pretrain', str(tmp_path/'cls'), '--method', 'rotnet', '--arch', 'test_resnet', '--n-in', '1', '--epochs', '1',
          '--stats', '0.5:0.25', '--out', str(tmp_path/'o')] + TINY)
    m = read_encoder_metadata(tmp_path/'o'/'encoder_rotnet.safetensors')
    assert m['n_in'] == 1 and m['recipe']['stats'] == [[0.5], [0.25]] and m['recipe']['n_images'] == len(d.items)
    assert 'knn_top1' in pd.read_csv(tmp_path/'o'/'pretrain_rotnet'/'history.csv')
    main(['pretrain', str(tmp_path/'cls'/'chelsea'), '--arch', 'test_resnet', '--epochs', '1', '--bs', '4',
          '--size', '16', '--quiet', '--out', str(tmp_path/'u')])                     # an unlabelled folder: no kNN
    assert 'knn_top1' not in pd.read_csv(tmp_path/'u'/'pretrain_simclr'/'history.csv')


class _Kill(Callback):
    "Stops the fit in the middle of epoch `epoch` as a kill would (the checkpoint of the epoch before is on disk)"
    def __init__(self, epoch): self.at = epoch
    def after_batch(self):
        if self.training and self.epoch == self.at and self.iter == 1: raise KeyboardInterrupt('killed')


@pytest.mark.parametrize('method,init', [('simclr', False), ('moco_v2', False),   # moco_v2: an EMA teacher and a key queue in the model
                                         ('simclr', True)])                       # from start weights: the guard's best encoder survives
def test_pretrain_resume_bit_identical(comp, tmp_path, monkeypatch, capsys, method, init):
    extra = []
    if init:
        import timm
        torch.manual_seed(3); torch.save(timm.create_model('test_resnet', num_classes=1000).state_dict(), tmp_path/'start.pth')
        extra = ['--init', str(tmp_path/'start.pth'), '--warmup', '0.5']
    args = ['pretrain', str(comp), '--method', method, '--arch', 'test_resnet', '--epochs', '4'] + extra + TINY
    main(args + ['--out', str(tmp_path/'full')])
    real = P.CheckpointCallback
    class Killed(real):
        def before_fit(self): super().before_fit(); self.learn.add_cb(_Kill(1))
    monkeypatch.setattr(P, 'CheckpointCallback', Killed)
    with pytest.raises(KeyboardInterrupt): main(args + ['--out', str(tmp_path/'cut')])
    ck = tmp_path/'cut'/f'pretrain_{method}'/'checkpoint.safetensors'
    assert checkpoint_epoch(ck) == 1 and not (tmp_path/'cut'/f'encoder_{method}.safetensors').exists()
    assert sorted(p.name for p in ck.parent.iterdir()) == ['best_encoder.safetensors'] * (init and (ck.parent/'best_encoder.safetensors').exists()) \
        + ['checkpoint.safetensors', 'settings.json']   # no half-written file
    monkeypatch.setattr(P, 'CheckpointCallback', real)
    torch.manual_seed(99); np.random.seed(99)                                       # whatever happened in between
    main(args + ['--out', str(tmp_path/'cut'), '--resume'])
    a, b = (load_file(str(p/f'encoder_{method}.safetensors')) for p in (tmp_path/'full', tmp_path/'cut'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)        # bit-identical weights
    assert (tmp_path/'full'/f'encoder_{method}.safetensors').read_bytes() == (tmp_path/'cut'/f'encoder_{method}.safetensors').read_bytes()
    ha, hb = (pd.read_csv(p/f'pretrain_{method}'/'history.csv') for p in (tmp_path/'full', tmp_path/'cut'))
    pd.testing.assert_frame_equal(ha, hb)                                            # same losses and kNN curve
    ta, tb = (load_file(str(p/f'pretrain_{method}'/'checkpoint.safetensors')) for p in (tmp_path/'full', tmp_path/'cut'))
    assert all(torch.equal(ta[k], tb[k]) for k in ta if k.startswith('model.'))     # teacher and queue buffers too
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:                                             # other settings: refused, naming them
        main(args[:-len(TINY)] + ['--size', '24', '--bs', '32', '--quiet', '--out', str(tmp_path/'cut'), '--resume'])
    assert e.value.code == 2 and 'size: 16 -> 24' in capsys.readouterr().err


def test_pseudo_label_kill_redoes_only_that_fold(comp, tmp_path, monkeypatch):
    calls, real = [], W._classifier
    def counting(*args, **kw):
        learn = real(*args, **kw); calls.append(learn)
        if len(calls) == 2 and kill: learn.add_cb(_Kill(0))
        return learn
    monkeypatch.setattr(W, '_classifier', counting)
    args = ['pseudo-label', str(comp), '--arch', 'test_resnet', '--folds', '3', '--epochs', '1', '--out', str(tmp_path)] + TINY
    kill = True
    with pytest.raises(KeyboardInterrupt): main(args)
    pl = tmp_path/'pseudo_label'
    done = {f: os.stat(pl/f).st_mtime_ns for f in ['fold_0.csv', 'fold_0_test.csv']}
    assert not (pl/'fold_1.csv').exists() and not (pl/'fold_1_test.csv').exists()
    kill, calls[:] = False, []
    oof = main(args)
    assert len(calls) == 2                                                   # folds 1 and 2 only
    assert {f: os.stat(pl/f).st_mtime_ns for f in done} == done and set(oof.fold) == {0, 1, 2}
