"""`ssfa` on bad input: every case exits with code 2 and one line naming the input and the fix, no traceback, before any image is
read when the arguments or paths are wrong; folders with classes of 1, 2 and 4 images through every subcommand; reruns with other
settings; a second run on a busy output folder."""
import json
import numpy as np, pandas as pd, pytest
import self_supervised_fa.data.folders as folders
from self_supervised_fa.app.cli import main
from self_supervised_fa.core.runs import run_log
from self_supervised_fa.app.steps import split_valid
from self_supervised_fa.encoders.files import read_encoder_metadata
from helpers import digit_folder

pytestmark = pytest.mark.usefixtures('one_torch_thread')
TINY = ['--arch', 'test_resnet', '--size', '16', '--bs', '16', '--epochs', '1', '--quiet']


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "Digits with classes of 8, 8, 8, 4, 2 and 1 images and 5 test images"
    return digit_folder(tmp_path_factory.mktemp('small')/'data', {0: 8, 1: 8, 2: 8, 3: 4, 4: 2, 5: 1}, n_test=5)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "Input files of the wrong kind"
    d = tmp_path_factory.mktemp('files')
    (d/'pic.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)))
    (d/'ids.csv').write_text('image_id,label\n1,0\n')
    (d/'afile').write_text('x')
    import timm, torch
    torch.save(timm.create_model('resnet10t', num_classes=1000).state_dict(), d/'r10t.pth')   # plain weights, as torchvision saves them
    return d


def run_bad(argv, capsys):
    "Run `ssfa argv` expecting a user error: (exit code, stderr)"
    with pytest.raises(SystemExit) as e: ssfa(argv)
    return e.value.code, capsys.readouterr().err


def ssfa(argv):
    "`ssfa` with `argv` (paths allowed): its return value"
    return main([str(a) for a in argv])


def no_scan(*args, **kw): raise AssertionError('the images were scanned before the error')


def _cases(small, files, out):
    enc, png, ids = files/'enc.safetensors', files/'pic.png', files/'ids.csv'
    return [   # (argv, what the message must name); every one fails before the image scan
        (['pretrain', small, '--epochs', '0'], r"argument --epochs: '0' is not a whole number at least 1"),
        (['pretrain', small, '--size', '0'], r"argument --size: '0' is not a whole number at least 8"),
        (['pretrain', small, '--lr', '-1'], r"argument --lr: '-1' is not a number above 0"),
        (['pretrain', small, '--bs', '0'], r"argument --bs: '0'"),
        (['pretrain', small, '--method', 'simclrr'], r"argument --method: invalid choice: 'simclrr'"),
        (['pretrain', small, '--resume', '--overwrite'], r"argument --overwrite: not allowed with argument --resume"),
        (['pretrain', small, '--workers', '-2'], r"argument --workers"),
        (['pretrain', small, '--precision', 'half'], r"argument --precision: invalid choice: 'half'"),
        (['evaluate', small, '--encoder', enc, '--budgets', '0,5'], r"argument --budgets: '0,5': give labels per class"),
        (['evaluate', small, '--encoder', enc, '--eval', 'knn,svm'], r"argument --eval: 'knn,svm': choose from knn,linear,finetune"),
        (['evaluate', small, '--encoder', enc, '--valid-pct', '1.5'], r"argument --valid-pct: '1.5' is not a number above 0 and below 1"),
        (['pseudo-label', small, '--arch', 'resnet18', '--folds', '1'], r"argument --folds: '1' is not a whole number at least 2"),
        (['pseudo-label', small, '--arch', 'resnet18', '--encoder', enc], r"argument --encoder: not allowed with argument --arch"),
        (['train', small, '--arch', 'resnet18', '--w', '2'], r"argument --w: '2' is not a number at least 0 and at most 1"),
        (['suspects', small, '--encoder', enc, '--top', '0'], r"argument --top"),
        (['suspects', small], r"give --oof \(from ssfa pseudo-label\), --encoder \(from ssfa pretrain\), or both"),
        (['train', small, '--arch', 'resnet18', '--relabel-valid'], r"--relabel-valid needs --relabel"),
        (['pretrain', small.parent/'nope'], r"DATA .*nope: no such folder"),
        (['pretrain', small, '--encoder', enc], r"--encoder .*enc.safetensors: no such file; give an encoder file"),
        (['evaluate', small, '--encoder', png], r"--encoder .*pic.png: not an encoder file or start weights \(.*\)"),
        (['pretrain', small, '--init', files/'gone.pth'], r"--init .*gone.pth: no such file; give an encoder file or start weights"),
        (['pretrain', small, '--init', png], r"--init .*pic.png: not an encoder file or start weights \(.*weights_only=True"),
        (['pretrain', small, '--arch', 'resnet18', '--init', files/'r10t.pth'], r"--init .*r10t.pth does not fit --arch resnet18: .*another architecture"),
        (['train', small, '--arch', 'resnet10t', '--init', 'no_such_tag'], r"--init no_such_tag: no such file or folder, and timm knows no pretrained tag"),
        (['pretrain', small, '--include-test', '--no-test'], r"--include-test and --no-test contradict each other"),
        (['evaluate', small, '--encoder', files/'r10t.pth'], r"r10t.pth does not say which architecture it holds: give --arch"),
        (['suspects', small, '--oof', files/'oof.csv'], r"--oof .*oof.csv: no such file; give out-of-fold probabilities"),
        (['train', small, '--arch', 'resnet18', '--soft-labels', png], r"--soft-labels .*pic.png: not a text CSV file"),
        (['train', small, '--arch', 'resnet18', '--soft-labels', ids], r"--soft-labels .*ids.csv: no column prob_<class>"),
        (['train', small, '--arch', 'resnet18', '--relabel', ids], r"--relabel .*ids.csv: no column action"),
        (['train', small, '--arch', 'resnet18', '--soft-labels', files], r"--soft-labels .*: is a folder"),
        (['pretrain', small, '--csv', 'labels.csv'], r"--csv labels.csv: no such file"),
        (['pretrain', small, '--images', 'imgs'], r"--images imgs: no such folder"),
        (['pretrain', small, '--out', files/'afile'], r"--out .*afile: is a file; give a folder"),
        (['pretrain', small, '--cache', '--cache-dir', files/'afile'], r"--cache-dir \(or \$SSFA_CACHE\) .*afile: is a file"),
        (['pretrain', small, '--label-col', 'klass'], r"label column 'klass' is not in .*train.csv \(columns: \['image_id', 'label'\]\)"),
    ]


def test_bad_inputs_exit_2_with_one_line_before_the_scan(small, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(folders, 'inspect_images', no_scan)
    out = tmp_path/'out'
    for argv, msg in _cases(small, files, out):
        code, err = run_bad(argv + ([] if '--out' in argv else ['--out', out]), capsys)
        assert code == 2, argv
        assert 'Traceback' not in err and len(err.strip().splitlines()) == 2, (argv, err)   # the error, and where help is
        assert pd.Series([err]).str.contains(msg).all(), (argv, msg, err)
        assert not out.exists() or '--label-col' in argv and [p.name for p in out.iterdir()] == ['ssfa.log'], argv   # nothing but the log


def test_data_errors_after_the_scan(small, tmp_path, capsys):
    out = tmp_path/'out'
    one = tmp_path/'one'/'cats'; one.mkdir(parents=True)
    for f in sorted((small/'images').iterdir())[:3]: (one/f.name).write_bytes(f.read_bytes())
    cases = [(['evaluate', one.parent, '--encoder', None], r"has no labels \(one class sub-folder, 'cats': give each class its own sub-folder\)"),
             (['pseudo-label', small, '--folds', '9'] + TINY, r"every class has fewer than n_folds=9 items .*use n_folds <= 8 \(--folds\)"),
             (['train', small, '--valid-fold', '0'] + TINY, r"valid_fold needs a fold column: name it with fold_col= \(--fold-col\)")]
    early = [(['evaluate', small, '--encoder', None, '--n-in', '3'], r"--n-in 3, but --encoder .* takes 1-channel images: drop --n-in")]
    ssfa(['pretrain', small, '--out', out, '--no-knn'] + TINY)
    for argv, msg in cases:
        argv = [out/'encoder_simclr.safetensors' if a is None else a for a in argv]
        code, err = run_bad(argv + ['--out', out], capsys)
        assert code == 2 and 'Traceback' not in err and pd.Series([err]).str.contains(msg).all(), (argv, err)
    for argv, msg in early:                                             # an argument against the encoder file: before the lock
        code, err = run_bad([out/'encoder_simclr.safetensors' if a is None else a for a in argv] + ['--out', out], capsys)
        assert code == 2 and pd.Series([err]).str.contains(msg).all(), (argv, err)
    log = (out/'ssfa.log').read_text().splitlines()
    assert sum(' failed after ' in l for l in log) == len(cases)       # each failure is in the log, with its message
    assert 'valid_fold needs a fold column' in log[-1]
    with pytest.raises(KeyError): ssfa(['train', small, '--valid-fold', '0', '--out', out, '--debug'] + TINY)   # --debug: the exception


def test_tiny_classes_through_every_subcommand(small, tmp_path, capsys):
    out = tmp_path/'o'; o = ['--out', out]
    r = ssfa(['pretrain', small, '--epochs', '2'] + TINY[:-3] + ['--quiet'] + o)        # the kNN monitor with classes of 1, 2, 4
    assert r['history'].knn_top1.between(0, 1).all() and len(r['history']) == 2
    enc = str(out/'encoder_simclr.safetensors')
    df = ssfa(['evaluate', small, '--encoder', enc, '--budgets', '1,all', '--bs', '16', '--epochs', '1', '--quiet'] + o)
    assert len(df) == 4 and df[['knn_top1', 'linear', 'finetune']].notna().all().all()
    split = split_valid(pd.read_csv(small/'train.csv', dtype={'image_id': str}), 0.2, 0)
    assert df.n_train.iloc[0] == split[~split.is_valid].label.nunique() >= 5             # one label per class that has training images
    capsys.readouterr()
    oof = ssfa(['pseudo-label', small, '--encoder', enc, '--folds', '3', '--epochs', '1', '--bs', '16', '--quiet'] + o)
    items = pd.read_csv(small/'train.csv', dtype={'image_id': str})
    assert sorted(oof.image_id) == sorted(items.image_id) and oof.fold.nunique() == 3   # the one-image class too
    assert "class(es) have fewer items than the 3 folds ('4': 2, '5': 1)" in capsys.readouterr().err.replace('4: 2', "'4': 2").replace('5: 1', "'5': 1")
    r = ssfa(['suspects', small, '--oof', out/'oof.csv', '--encoder', enc, '--quiet'] + o)
    assert sorted(r['table'].image_id) == sorted(items.image_id)
    r = ssfa(['train', small, '--encoder', enc, '--soft-labels', out/'oof.csv', '--epochs', '1', '--bs', '16', '--quiet'] + o)
    sc = json.loads((out/'scores.json').read_text())
    assert np.isfinite(sc['accuracy']) and sc['n_train'] + sc['n_valid'] == len(items) and sc['valid_labels'] == 'given'
    assert len(pd.read_csv(out/'submission.csv')) == 5


def test_rerun_with_other_settings_is_refused_then_replaced(small, tmp_path, capsys):
    out = tmp_path/'o'
    args = ['pseudo-label', small, '--folds', '2', '--out', out] + TINY
    first = ssfa(args)
    done = (out/'pseudo_label'/'fold_0.csv').stat().st_mtime_ns
    again = ssfa(args)                                                  # same settings: the folds are reused
    assert (out/'pseudo_label'/'fold_0.csv').stat().st_mtime_ns == done and again.equals(first)
    capsys.readouterr()
    other = [a if a != 'test_resnet' else 'resnet10t' for a in args]
    code, err = run_bad(other + ['--epochs', '2'], capsys)
    assert code == 2 and 'model: "test_resnet" -> "resnet10t"' in err and 'epochs: 1 -> 2' in err and '--overwrite' in err
    assert (out/'pseudo_label'/'fold_0.csv').stat().st_mtime_ns == done           # refused: the old results are untouched
    ssfa(other + ['--epochs', '2', '--overwrite'])
    rec = json.loads((out/'pseudo_label'/'settings.json').read_text())
    assert rec['model'] == 'resnet10t' and rec['epochs'] == 2
    assert (out/'pseudo_label'/'fold_0.csv').stat().st_mtime_ns != done


def test_precision_and_size_defaults_are_said_and_recorded(small, tmp_path, capsys):
    "Without --size the images' own size; the precision is said once, written into the recipe, and a rerun at another is refused"
    out = tmp_path/'o'
    args = ['pretrain', small, '--out', out, '--arch', 'test_resnet', '--bs', '16', '--epochs', '1', '--quiet', '--precision', 'fp32']
    ssfa(args)
    said = capsys.readouterr().out
    assert "image size 28 px: the images' median shorter side (28 px)" in said
    assert 'float32 on this CPU' in said
    recipe = read_encoder_metadata(out/'encoder_simclr.safetensors')['recipe']
    assert (recipe['precision'], recipe['size']) == ('fp32', 28)
    code, err = run_bad(args[:-1] + ['bf16'], capsys)
    assert code == 2 and 'precision: "fp32" -> "bf16"' in err and '--overwrite' in err


def test_second_run_on_a_busy_folder_is_refused(small, tmp_path, capsys, monkeypatch):
    out = tmp_path/'o'
    monkeypatch.setattr(folders, 'inspect_images', no_scan)
    with run_log(out, 'ssfa pretrain (the first run)'):
        code, err = run_bad(['pretrain', small, '--out', out] + TINY, capsys)
    assert code == 2 and 'is in use by another run' in err and 'ssfa pretrain (the first run)' in err
    assert sorted(p.name for p in out.iterdir()) == ['ssfa.log']                 # the second run wrote nothing


def test_suspects_says_when_the_ranking_cannot_be_trusted(small, tmp_path, capsys):
    "Out-of-fold probabilities that ignore the labels (a model too weak to rank): stdout says so once, with what to do; summary.json too"
    items = pd.read_csv(small/'train.csv', dtype={'image_id': str})
    classes = sorted(items.label.astype(str).unique())
    p = np.random.default_rng(0).dirichlet(np.ones(len(classes)), len(items))
    oof = pd.DataFrame({'image_id': items.image_id, 'label': items.label, **{f'prob_{c}': p[:, i] for i, c in enumerate(classes)}})
    oof.to_csv(tmp_path/'oof.csv', index=False)
    capsys.readouterr()
    r = ssfa(['suspects', small, '--oof', tmp_path/'oof.csv', '--out', tmp_path/'o', '--quiet'])
    out, err = capsys.readouterr()
    assert r['trust']['ok'] is False and out.count('WARNING: this ranking cannot be trusted') == 1 and 'ssfa pretrain' in out
    assert 'cannot be trusted' not in err and 'agrees with' not in err                     # not repeated as a note
    assert json.loads((tmp_path/'o'/'review'/'summary.json').read_text())['trustworthy'] is False
    assert 'near-duplicate pairs: 0' in out                                                  # different digits are not copies
