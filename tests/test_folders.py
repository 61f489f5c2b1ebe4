"Reading a user's folder: layouts, labels, channels, sizes, bad files, unsafe ids, statistics, cache"
import os, shutil
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from self_supervised_fa.data.photos import get_colour_competition, PHOTO_CLASSES
from self_supervised_fa.data.folders import *
from self_supervised_fa.data.loading import *
from self_supervised_fa.labels.pseudo_label import assign_folds


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def comp(small_colour_competition): return small_colour_competition


def test_colour_competition_layout(comp):
    tr, te = pd.read_csv(comp/'train.csv'), pd.read_csv(comp/'test.csv')
    assert list(tr.columns) == ['image_id'] + PHOTO_CLASSES + ['region']
    assert (tr[PHOTO_CLASSES].sum(axis=1) == 1).all() and (tr[PHOTO_CLASSES].sum() == 12).all() and len(te) == 36
    assert not set(tr.image_id) & set(te.image_id)
    files = {os.path.splitext(f)[0]: f for f in os.listdir(comp/'images')}
    assert set(files) == set(tr.image_id) | set(te.image_id)
    modes, sizes = {}, set()
    bad = (comp/'COMPLETE').read_text().split()[-1]
    for f in files.values():
        if f == bad: continue
        im = Image.open(comp/'images'/f); modes[im.mode] = modes.get(im.mode, 0) + 1; sizes.add(im.size)
    assert set(modes) == {'RGB', 'L', 'RGBA', 'P'} and len(sizes) > 50     # mixed modes, varied sizes
    noisy = pd.read_csv(comp/'train_noisy.csv')
    flipped = noisy[PHOTO_CLASSES].values.argmax(1) != tr[PHOTO_CLASSES].values.argmax(1)
    assert flipped.sum() == round(0.25 * len(tr))


def test_competition_reader(comp):
    d = read_image_data(comp)
    tr = pd.read_csv(comp/'train.csv')
    assert d.layout == 'competition' and d.classes == PHOTO_CLASSES and d.submission_cols == PHOTO_CLASSES
    assert d.items.image_id.tolist() == tr.image_id.tolist()
    assert d.items.label.tolist() == [PHOTO_CLASSES[i] for i in tr[PHOTO_CLASSES].values.argmax(1)]
    for i, f in zip(d.items.image_id, d.items.fname):   # the extension was found for every id
        assert os.path.basename(f).startswith(i + '.') and os.path.exists(f)
    assert d.test.image_id.tolist() == pd.read_csv(comp/'test.csv').image_id.tolist()
    g = read_image_data(comp, group_col='region', label_col=','.join(PHOTO_CLASSES))
    assert g.items.group.tolist() == tr.region.tolist() and g.classes == PHOTO_CLASSES


def test_wrong_columns_named(comp):
    with pytest.raises(KeyError, match=r"id column 'img' is not in .*train.csv \(columns: \['image_id', 'chelsea'"):
        read_image_data(comp, id_col='img')
    with pytest.raises(KeyError, match=r"label column 'disease' is not in .*'grace_hopper', 'region'"):
        read_image_data(comp, label_col='disease')
    with pytest.raises(KeyError, match=r"one-hot label columns \['rust'\] are not in"):
        read_image_data(comp, label_col='chelsea,rust')
    with pytest.raises(KeyError, match="group column 'site'"): read_image_data(comp, group_col='site')


def test_unsafe_ids_refused(tmp_path):
    (tmp_path/'images').mkdir(); Image.new('RGB', (8, 8)).save(tmp_path/'images'/'a.jpg')
    (tmp_path/'secret.jpg').write_bytes(b'x')
    for bad in ['../secret', '/etc/passwd', 'sub/../../secret']:
        pd.DataFrame({'image_id': ['a', bad], 'label': ['x', 'y']}).to_csv(tmp_path/'train.csv', index=False)
        with pytest.raises(ValueError, match='inside the image folder'): read_image_data(tmp_path)


def test_label_column_ext_and_ambiguity(tmp_path):
    (tmp_path/'imgs').mkdir()
    for i in range(4): Image.new('RGB', (10 + i, 8)).save(tmp_path/'imgs'/f'p{i}.png')
    pd.DataFrame({'file': [f'p{i}' for i in range(4)], 'species': ['b', 'a', 'b', 'a']}).to_csv(tmp_path/'labels.csv', index=False)
    d = read_image_data(tmp_path, csv='labels.csv', images='imgs', label_col='species', ext='png')
    assert d.classes == ['a', 'b'] and d.items.label.tolist() == ['b', 'a', 'b', 'a'] and d.id_col == 'file'
    assert d.items.fname.tolist() == [str(tmp_path/'imgs'/f'p{i}.png') for i in range(4)]
    Image.new('RGB', (8, 8)).save(tmp_path/'imgs'/'p0.jpg')   # two files for one id
    with pytest.raises(ValueError, match="'p0' matches 2 files"): read_image_data(tmp_path, csv='labels.csv', images='imgs', label_col='species')


def test_class_folders_and_unlabelled_tree(tmp_path):
    for split in ['train', 'valid']:
        for c, mode in [('cat', 'RGB'), ('dog', 'L')]:
            (tmp_path/'cls'/split/c/'deep').mkdir(parents=True)
            Image.new(mode, (20, 12)).save(tmp_path/'cls'/split/c/f'{c}1.jpg')
            Image.new(mode, (12, 20)).save(tmp_path/'cls'/split/c/'deep'/f'{c}2.png')
    (tmp_path/'cls'/'train'/'cat'/'notes.txt').write_text('not an image')
    d = read_image_data(tmp_path/'cls')
    assert d.layout == 'class folders' and d.classes == ['cat', 'dog'] and len(d.items) == 8
    assert d.items.groupby('is_valid').label.value_counts().eq(2).all()
    assert set(d.items.image_id) >= {'train/cat/cat1', 'valid/dog/deep/dog2'}
    flat = read_image_data(tmp_path/'cls'/'train')   # no train/valid split: plain class folders
    assert flat.classes == ['cat', 'dog'] and 'is_valid' not in flat.items and len(flat.items) == 4
    u = read_image_data(tmp_path/'cls'/'train'/'cat')   # one folder of images, one sub-folder: unlabelled, recursive
    assert u.layout == 'unlabelled' and not u.labelled and sorted(u.items.image_id) == ['cat1', 'deep/cat2']


def test_mixed_modes_and_sizes_load(comp):
    d = check_image_data(read_image_data(comp), progress=False)
    modes = d.info.set_index('fname')['mode']
    some = [modes[modes == m].index[0] for m in ['RGB', 'L', 'RGBA', 'P']]
    for n_in in (1, 3):
        for f in some:
            im = open_image(f, n_in, 32)
            assert im.mode == ('L' if n_in == 1 else 'RGB') and min(im.size) >= 32
    items = d.items.assign(is_valid=np.arange(len(d.items)) % 4 == 0)
    for n_in in (1, 3):
        dls = folder_dls(items, 24, n_in, bs=len(items), stats=None, classes=d.classes, shuffle=False)
        xb, yb = dls.train.one_batch()
        assert xb.shape == (int((~items.is_valid).sum()), n_in, 24, 24) and 0 <= xb.min() and xb.max() <= 1
    assert not grey_only(d)


def test_bad_files_report_exactly(comp, tmp_path):
    c = tmp_path/'c'; shutil.copytree(comp, c)
    os.remove(next((c/'images').glob('Train_3.*'))); os.remove(next((c/'images').glob('Test_2.*')))
    for f in (c/'images').glob('Train_5.*'): f.unlink()
    (c/'images'/'Train_5.jpg').write_bytes(b'not a jpeg at all')   # garbage where a file is expected
    bad_before = (comp/'COMPLETE').read_text().split()[-1]          # the set's truncated JPEG
    d = read_image_data(c)
    with pytest.warns(UserWarning, match=r'4 of 144 image files are missing or unreadable'):
        d = check_image_data(d, report=tmp_path/'bad.csv', progress=False)
    rep = pd.read_csv(tmp_path/'bad.csv')
    assert sorted(rep.image_id) == sorted(['Train_3', 'Test_2', 'Train_5', os.path.splitext(bad_before)[0]])
    assert rep.set_index('image_id').error['Train_3'] == 'missing' and rep.error.str.startswith('unreadable').sum() == 2
    assert set(rep.split) == {'train', 'test'} and len(d.items) == 108 - 3 and len(d.test) == 36
    with pytest.raises(ValueError, match='4 of 144 .*without --strict'):
        check_image_data(read_image_data(c), strict=True, progress=False)


def test_grouped_folds(comp):
    d = read_image_data(get_colour_competition(), group_col='region')
    f = assign_folds(d.items, 5, 'label', seed=0, group='group')
    assert f.groupby('group').fold.nunique().max() == 1                      # no group in two folds
    assert (pd.crosstab(f.label, f.fold) > 0).all().all()                    # every class in every fold
    single = assign_folds(d.items.assign(group=d.items.image_id), 5, 'label', seed=0, group='group')
    counts = pd.crosstab(single.label, single.fold).values
    assert np.abs(counts - counts.sum(1, keepdims=True) / 5).max() <= 1      # stratified within one item per class


def test_stats_and_cache(comp, tmp_path):
    d = check_image_data(read_image_data(comp), progress=False)
    fn = list(d.items.fname[:30])
    mean, std = image_stats(fn, 3, 32, n=None)
    ref = []
    for f in fn:   # independent: PIL resize of the shorter side to 32, then numpy
        im = Image.open(f); im = im.convert('RGBA') if im.mode in ('RGBA', 'P') else im
        if im.mode == 'RGBA': bg = Image.new('RGBA', im.size, (255,) * 4); im = Image.alpha_composite(bg, im)
        im = im.convert('RGB'); k = 32 / min(im.size)
        if k < 1: im = im.resize((max(32, round(im.width * k)), max(32, round(im.height * k))), Image.BILINEAR)
        ref.append(np.asarray(im).reshape(-1, 3) / 255.)
    ref = np.concatenate(ref)
    np.testing.assert_allclose(mean, ref.mean(0), atol=2e-3); np.testing.assert_allclose(std, ref.std(0), atol=2e-3)
    cached = cache_images(fn, 32, 3, tmp_path, progress=False)
    for a, b in zip(fn[:5], cached[:5]):
        x, y = np.asarray(open_image(a, 3, 32)), np.asarray(Image.open(b))
        assert min(y.shape[:2]) == 32
        k = 32 / min(x.shape[:2])
        if k < 1: x = np.asarray(Image.fromarray(x).resize(y.shape[1::-1], Image.BILINEAR))
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 6    # the same picture (another crop differs by ~50), up to JPEG q95
    os.utime(fn[0], ns=(1, 1))                                       # a changed file gets a new cache entry
    assert cache_images(fn[:1], 32, 3, tmp_path, progress=False)[0] != cached[0]
