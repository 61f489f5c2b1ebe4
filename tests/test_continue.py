"""Weights in (issue 25): `ssfa pretrain --init` with the guard (the encoder kept is the best the monitor saw, the start included),
without it, test images only with --include-test, teachers that start from the same weights, and several encoders compared by
`ssfa evaluate`."""
import warnings
import pandas as pd, pytest, timm, torch
from self_supervised_fa.app.cli import main
from self_supervised_fa.encoders.files import load_encoder, read_encoder_metadata
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.evaluate.monitor import KNNMonitorCallback
from helpers import digit_folder

pytestmark = pytest.mark.usefixtures('one_torch_thread')
TINY = ['--size', '16', '--bs', '16', '--quiet']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    "Ten digits of each of four classes, and six test images"
    return digit_folder(tmp_path_factory.mktemp('cont')/'data', {0: 10, 1: 10, 2: 10, 3: 10}, n_test=6)


@pytest.fixture(scope='module')
def start(tmp_path_factory):
    "Plain timm weights of test_resnet with a 1,000-class classifier, RGB: what a user downloads"
    p = tmp_path_factory.mktemp('w')/'test_resnet_in1k.pth'
    torch.manual_seed(1)
    torch.save(timm.create_model('test_resnet', num_classes=1000).state_dict(), p)
    return p


def _start_body(start, n_in=1):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return create_timm_body('test_resnet', n_in=n_in, weights=start)


def _equal(a, b): return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_guard_keeps_the_start_when_every_epoch_is_worse(digits, start, tmp_path, monkeypatch, capsys):
    "The kNN monitor scripted to fall below the start: the encoder written is the start, and the run says so"
    scores = iter([0.9, 0.5, 0.6])   # start, epoch 1, epoch 2
    monkeypatch.setattr(KNNMonitorCallback, 'measure', lambda self: next(scores))
    out = tmp_path/'o'
    main(['pretrain', str(digits), '--arch', 'test_resnet', '--init', str(start), '--epochs', '2', '--out', str(out)] + TINY)
    said = capsys.readouterr().out
    assert 'continuing did not beat the starting weights on knn_top1 (0.9000' in said
    assert 'the heads warm up for 1 epoch(s) on the frozen body' in said
    enc = load_encoder(out/'encoder_simclr.safetensors')
    assert enc.n_in == 1 and _equal(enc, _start_body(start))                     # the start, adapted to grey, unchanged
    rec = read_encoder_metadata(out/'encoder_simclr.safetensors')['recipe']
    assert rec['continuation']['helped'] is False and rec['continuation']['start'] == 0.9 and rec['guard'] == dict(warmup=1.0, body_lr=0.1)
    hist = pd.read_csv(out/'pretrain_simclr'/'history.csv')
    assert hist.knn_top1.tolist() == [0.5, 0.6]


def test_guard_keeps_the_best_epoch_and_no_guard_the_last(digits, start, tmp_path, monkeypatch, capsys):
    scores = iter([0.5, 0.8, 0.6])
    monkeypatch.setattr(KNNMonitorCallback, 'measure', lambda self: next(scores))
    out = tmp_path/'g'
    r = main(['pretrain', str(digits), '--arch', 'test_resnet', '--init', str(start), '--epochs', '2', '--warmup', '0.5',
              '--out', str(out)] + TINY)
    rec = read_encoder_metadata(out/'encoder_simclr.safetensors')['recipe']['continuation']
    assert (rec['best'], rec['best_epoch'], rec['helped']) == (0.8, 0, True)
    kept = load_encoder(out/'encoder_simclr.safetensors')
    assert not _equal(kept, _start_body(start)) and _equal(kept, r['learn'].model.encoder)   # the model holds the kept encoder
    from safetensors.torch import load_file
    best = load_file(str(out/'pretrain_simclr'/'best_encoder.safetensors'))                 # kept on disk for a resumed run
    assert all(torch.equal(v, best[k]) for k, v in kept.state_dict().items())
    # --no-guard: the body trains from the first step and the last epoch is written, whatever the monitor says
    scores2 = iter([0.9, 0.5, 0.6])
    monkeypatch.setattr(KNNMonitorCallback, 'measure', lambda self: next(scores2))
    r2 = main(['pretrain', str(digits), '--arch', 'test_resnet', '--init', str(start), '--epochs', '2', '--no-guard',
               '--out', str(tmp_path/'n')] + TINY)
    last = load_encoder(tmp_path/'n'/'encoder_simclr.safetensors')
    assert _equal(last, r2['learn'].model.encoder) and not _equal(last, _start_body(start))
    assert read_encoder_metadata(tmp_path/'n'/'encoder_simclr.safetensors')['recipe']['continuation'] is None


def test_test_images_only_with_include_test(digits, tmp_path, capsys):
    test_ids = set(pd.read_csv(digits/'test.csv', dtype={'image_id': str}).image_id)
    for flag, n in (([], 0), (['--include-test'], 6)):
        r = main(['pretrain', str(digits), '--arch', 'test_resnet', '--epochs', '1', '--no-knn', '--out', str(tmp_path/str(n))]
                 + flag + TINY)
        said = capsys.readouterr().out
        from pathlib import Path
        used = {Path(str(p)).stem for dl in (r['learn'].dls.train, r['learn'].dls.valid) for p in dl.items.fname}
        assert len(used & test_ids) == n and len(used) == 40 + n
        assert ('the 6 test images join pretraining' in said) == bool(n)
        assert ('the 6 test images stay out of pretraining; --include-test adds them' in said) == (not n)


@pytest.mark.parametrize('method', ['byol', 'moco_v3', 'dino'])
def test_teacher_starts_from_the_same_weights(start, method):
    from self_supervised_fa.app.registry import method_learner
    from self_supervised_fa.data.sample import sample_dls
    dls = sample_dls(n_per_class=2, bs=8)
    learn = method_learner(method, dls, _start_body(start), n_in=1, precision=None)
    t = learn.model.teacher.encoder
    assert _equal(t, learn.model.encoder) and _equal(t, _start_body(start))
    body, heads = learn.splitter(learn.model)                                   # two groups: the guard's lower body rate
    assert {id(p) for p in body} == {id(p) for p in learn.model.encoder.parameters()} and heads


def test_evaluate_compares_several_encoders(digits, start, tmp_path, capsys):
    "The start weights (a plain file, with --arch) and an exported folder of them beside our file: one table, one row set each"
    from self_supervised_fa.encoders.files import save_encoder
    from self_supervised_fa.encoders.export import export_timm
    body = _start_body(start)
    ours = save_encoder(body, tmp_path/'ours.safetensors', recipe=dict(size=16, stats=[[0.5], [0.25]]))
    exported = export_timm(ours, tmp_path/'exported')
    df = main(['evaluate', str(digits), '--encoder', str(start), str(ours), str(exported), '--arch', 'test_resnet', '--eval', 'knn',
               '--budgets', '2,all', '--out', str(tmp_path/'e')] + TINY)
    assert list(dict.fromkeys(df.encoder)) == ['test_resnet_in1k', 'ours', 'exported', 'from scratch']
    knn = df.pivot(index='labels', columns='encoder', values='knn_top1')
    # the same weights by three roads, evaluated on the same stats: the same kNN accuracy
    assert (knn['ours'] == knn['exported']).all() and (knn['ours'] == knn['test_resnet_in1k']).all()
    assert (tmp_path/'e'/'label_efficiency.png').stat().st_size > 1000


def test_train_and_pseudo_label_start_from_init(digits, start, tmp_path):
    "--init on the classifier steps: the body starts from the file (adapted to grey), and the settings name the file's content"
    import json
    from self_supervised_fa.app.steps import content_digest
    r = main(['train', str(digits), '--arch', 'test_resnet', '--init', str(start), '--epochs', '1', '--out', str(tmp_path/'t')] + TINY)
    sc = json.loads((tmp_path/'t'/'scores.json').read_text())
    assert sc['model'] == f"encoder {content_digest(start)} as test_resnet" and 0 <= sc['accuracy'] <= 1
    main(['pseudo-label', str(digits), '--arch', 'test_resnet', '--init', str(start), '--epochs', '1', '--folds', '2',
          '--out', str(tmp_path/'p')] + TINY)
    assert len(pd.read_csv(tmp_path/'p'/'oof.csv')) == 40


def test_ssfa_export_loads_in_plain_timm(tmp_path, capsys):
    from self_supervised_fa.encoders.files import save_encoder
    body = create_timm_body('test_resnet', n_in=1)
    enc = save_encoder(body, tmp_path/'enc.safetensors', recipe=dict(size=16, stats=[[0.5], [0.25]]))
    main(['export', str(enc), '--out', str(tmp_path/'x')])
    said = capsys.readouterr().out
    assert "timm.create_model('test_resnet', in_chans=1, num_classes=0, checkpoint_path=" in said
    plain = timm.create_model('test_resnet', in_chans=1, num_classes=0, checkpoint_path=str(tmp_path/'x'/'model.safetensors'))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(plain.eval()(x), body.eval().embed(x))
