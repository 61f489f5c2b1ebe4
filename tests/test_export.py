"Encoders exported to plain timm: the folder loads in timm alone (three ways, and in a process without this library), keeps timm's keys, and its config is read strictly"
import json, subprocess, sys, textwrap
import pytest, torch, timm
from safetensors.torch import load_file, save_file
from self_supervised_fa.encoders.body import create_timm_body
from self_supervised_fa.encoders.files import save_encoder
from self_supervised_fa.encoders.export import export_timm, read_timm_export

VIT = ('vit_tiny_patch16_224', dict(img_size=32, patch_size=8))
CASES = [('resnet10t', {}, 1), ('resnet18', {}, 3), (*VIT, 1), (*VIT, 3)]
RECIPE = dict(method='simclr', epochs=2, size=32)


def _has_local_dir() -> bool:
    try: from timm.models._hub import load_model_config_from_path  # noqa: F401 (the timm that resolves 'local-dir:')
    except ImportError: return False
    return True


def _export(tmp_path, arch, kw, n_in, **kwargs):
    torch.manual_seed(0)
    enc = create_timm_body(arch, n_in=n_in, **kw).eval()
    recipe = dict(RECIPE, stats=[[0.2] * n_in, [0.3] * n_in])
    return enc, export_timm(enc, tmp_path/f'{arch}_{n_in}', recipe=recipe, **kwargs), recipe


def _args(out): return json.loads((out/'config.json').read_text())['model_args']


@pytest.mark.parametrize('arch,kw,n_in', CASES, ids=[f'{a}-{n}' for a, _, n in CASES])
def test_plain_timm_gives_the_encoders_features(tmp_path, arch, kw, n_in):
    enc, out, _ = _export(tmp_path, arch, kw, n_in)
    args, fn, x = _args(out), str(out/'model.safetensors'), torch.randn(2, n_in, 32, 32)
    assert args['in_chans'] == n_in and args['num_classes'] == 0 and all(args.get(k) is not None for k in kw)
    extra = {k: v for k, v in args.items() if k not in ('in_chans', 'num_classes')}   # what a ViT needs besides
    with torch.no_grad():
        want = enc.embed(x)
        a = timm.create_model(arch, in_chans=n_in, num_classes=0, checkpoint_path=fn, **extra).eval()
        b = timm.create_model(arch, pretrained=True, in_chans=n_in, num_classes=0, pretrained_cfg_overlay=dict(file=fn), **extra).eval()
        for m in (a, b): torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
        if not _has_local_dir(): pytest.skip(f"timm {timm.__version__} has no 'local-dir:' model source")
        c = timm.create_model('local-dir:' + str(out), pretrained=True).eval()
        torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
    data = timm.data.resolve_data_config({}, model=c)
    assert data['input_size'] == (n_in, 32, 32) and list(data['mean']) == [0.2] * n_in and list(data['std']) == [0.3] * n_in


SCRIPT = '''
import json, sys
from pathlib import Path
import torch, timm
from safetensors.torch import load_file
torch.set_num_threads(1)
for folder in sys.argv[1:]:
    folder = Path(folder)
    cfg, saved = json.loads((folder/'config.json').read_text()), load_file(str(folder/'features.safetensors'))
    x, want = saved['x'], saved['want']
    models = [timm.create_model(cfg['architecture'], checkpoint_path=str(folder/'model.safetensors'), **cfg['model_args'])]
    if {local_dir}: models.append(timm.create_model('local-dir:' + str(folder), pretrained=True))
    with torch.no_grad():
        for m in models: torch.testing.assert_close(m.eval()(x), want, rtol=1e-5, atol=1e-5)
    print(folder.name, len(models), 'ways: equal')
assert 'self_supervised_fa' not in sys.modules, 'the check imported self_supervised_fa'
'''

def test_a_process_without_this_library_gives_the_same_features(tmp_path):
    "The folder is all plain timm needs: a fresh interpreter that imports only torch, timm and safetensors gets the features"
    folders = []
    for arch, kw, n_in in (CASES[0], CASES[2]):
        enc, out, _ = _export(tmp_path, arch, kw, n_in)
        x = torch.randn(2, n_in, 32, 32)
        with torch.no_grad(): save_file(dict(x=x, want=enc.embed(x).contiguous()), str(out/'features.safetensors'))
        folders.append(str(out))
    script = tmp_path/'check.py'
    script.write_text(textwrap.dedent(SCRIPT).replace('{local_dir}', str(_has_local_dir())))
    r = subprocess.run([sys.executable, str(script), *folders], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('ways: equal') == 2, r.stdout


@pytest.mark.parametrize('arch,kw,n_in', [CASES[0], CASES[3]], ids=['resnet10t', 'vit'])
def test_the_keys_are_plain_timms(tmp_path, arch, kw, n_in):
    _, out, _ = _export(tmp_path, arch, kw, n_in)
    sd = load_file(str(out/'model.safetensors'))
    assert set(sd) == set(timm.create_model(arch, num_classes=0).state_dict())
    assert not any(k.startswith('model.') for k in sd)
    plain = timm.create_model(arch, **_args(out)).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in plain.items()}


def test_a_cut_body_is_refused(tmp_path):
    cut = create_timm_body('resnet10t', cut=-2)
    for enc in (cut, save_encoder(cut, tmp_path/'cut_encoder')):   # the body, or its encoder file
        with pytest.raises(ValueError, match='cut body.*cannot build.*cut=None'): export_timm(enc, tmp_path/'cut')
    assert not (tmp_path/'cut').exists()


def test_an_encoder_file_is_read_strictly(tmp_path):
    "A file whose metadata is not save_encoder's is refused before anything runs or is written"
    enc = create_timm_body('resnet10t', n_in=1)
    sd = {k: v.contiguous() for k, v in enc.state_dict().items()}
    for field, value in [('format', 'pt'), ('arch', "__import__('os')"), ('n_in', '1+1'), ('recipe', '[1]')]:
        meta = {**dict(format='self_supervised_fa.encoder', arch='resnet10t', n_in='1', cut='None', recipe='{}'), field: value}
        save_file(sd, str(tmp_path/'f.safetensors'), metadata=meta)
        with pytest.raises(ValueError, match=f"metadata field '{field}'"): export_timm(tmp_path/'f.safetensors', tmp_path/'out')
    save_file({k: v for k, v in sd.items() if 'fc' not in k and 'layer4' not in k}, str(tmp_path/'f.safetensors'),
              metadata=dict(format='self_supervised_fa.encoder', arch='resnet10t', n_in='1', cut='None'))
    with pytest.raises(KeyError, match='missing keys'): export_timm(tmp_path/'f.safetensors', tmp_path/'out')
    assert not (tmp_path/'out').exists()


def test_an_encoder_file_exports_with_its_recipe(tmp_path):
    enc = create_timm_body('resnet10t', n_in=1).eval()
    recipe = dict(RECIPE, stats=[[0.5], [0.25]])
    out = export_timm(save_encoder(enc, tmp_path/'enc', recipe=recipe), tmp_path/'out')
    assert read_timm_export(out)['recipe'] == recipe
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        m = timm.create_model('resnet10t', checkpoint_path=str(out/'model.safetensors'), **_args(out)).eval()
        torch.testing.assert_close(m(x), enc.embed(x))


def test_without_a_recipe_the_architectures_stats_per_channel(tmp_path):
    out = export_timm(create_timm_body('resnet10t', n_in=1), tmp_path/'out')
    r = read_timm_export(out)
    assert r['recipe'] == {} and r['n_in'] == 1 and r['size'] == 176   # resnet10t's own input size
    assert r['stats'] == [[pytest.approx(sum(timm.data.IMAGENET_DEFAULT_MEAN) / 3)], [pytest.approx(sum(timm.data.IMAGENET_DEFAULT_STD) / 3)]]


def test_read_round_trips_arch_n_in_recipe(tmp_path):
    enc, out, recipe = _export(tmp_path, *CASES[2])
    for path in (out, out/'model.safetensors', out/'config.json'):
        r = read_timm_export(path)
        assert (r['arch'], r['n_in'], r['recipe'], r['size']) == ('vit_tiny_patch16_224', 1, recipe, 32)
        assert r['stats'] == recipe['stats']
        assert r['model_args'] == dict(dynamic_img_size=True, img_size=[32, 32], patch_size=8, global_pool='token')
    # the tag survives in our section; timm's 'architecture' is the bare name
    tagged = export_timm(create_timm_body('resnet18.a1_in1k', n_in=3), tmp_path/'tagged')
    assert read_timm_export(tagged)['arch'] == 'resnet18.a1_in1k'
    assert json.loads((tagged/'config.json').read_text())['architecture'] == 'resnet18'


BAD = [('model_args', 'in_chans', '1', "'model_args.in_chans'"),
       ('model_args', 'in_chans', 2, "'self_supervised_fa.n_in'"),   # disagrees with our n_in and timm's input size
       (None, 'architecture', 5, "'architecture'"),
       (None, 'model_args', [1], "'model_args'"),
       ('pretrained_cfg', 'input_size', [1, 32], "'pretrained_cfg.input_size'"),
       ('pretrained_cfg', 'mean', 'grey', "'pretrained_cfg.mean/std'"),
       ('self_supervised_fa', 'arch', "__import__('os').system('true')", "'self_supervised_fa.arch'"),
       ('self_supervised_fa', 'recipe', '{"size": 32}', "'self_supervised_fa.recipe'"),
       ('self_supervised_fa', 'format', 'other', "'self_supervised_fa.format'")]

@pytest.mark.parametrize('where,key,value,field', BAD, ids=[f'{w}.{k}' for w, k, *_ in BAD])
def test_read_rejects_a_wrong_field(tmp_path, where, key, value, field):
    _, out, _ = _export(tmp_path, *CASES[0])
    cfg = json.loads((out/'config.json').read_text())
    (cfg[where] if where else cfg)[key] = value
    (out/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"config.json: field {field}"): read_timm_export(out)


def test_read_rejects_what_is_not_a_config(tmp_path):
    with pytest.raises(FileNotFoundError, match='no .*config.json'): read_timm_export(tmp_path)
    (tmp_path/'config.json').write_text('{"architecture": resnet18}')
    with pytest.raises(ValueError, match='not valid JSON'): read_timm_export(tmp_path)
    (tmp_path/'config.json').write_text('["resnet18"]')
    with pytest.raises(ValueError, match="field '\\(top level\\)'"): read_timm_export(tmp_path)
    (tmp_path/'config.json').write_text('{"architecture": "resnet181"}')
    with pytest.raises(ValueError, match="field 'architecture'"): read_timm_export(tmp_path)


def test_arguments_plain_timm_cannot_rebuild_are_refused(tmp_path):
    "An export is checked before it is written: the architecture and model_args must rebuild the exact keys and shapes"
    enc = create_timm_body(*VIT[:1], n_in=3, **VIT[1])
    with pytest.raises(ValueError, match='does not match the encoder'): export_timm(enc, tmp_path/'a', model_args=dict(patch_size=16))
    with pytest.raises(ValueError, match='JSON config cannot hold'): export_timm(enc, tmp_path/'b', model_args=dict(act_layer=torch.nn.GELU))
    assert not (tmp_path/'a').exists() and not (tmp_path/'b').exists()


def test_a_timm_that_records_no_arguments(tmp_path, monkeypatch):
    "With a timm that has no `get_model_args`, the arguments a ViT shows as attributes rebuild it"
    monkeypatch.delattr(timm.models, 'get_model_args')
    for case in (CASES[0], CASES[3]):
        enc, out, _ = _export(tmp_path, *case)
        x = torch.randn(2, case[2], 32, 32)
        with torch.no_grad():
            m = timm.create_model(case[0], checkpoint_path=str(out/'model.safetensors'), **_args(out)).eval()
            torch.testing.assert_close(m(x), enc.embed(x))


def test_read_leaves_out_stats_that_are_not_per_channel(tmp_path):
    "A folder whose mean/std are another channel count's (timm may write its 3-channel defaults for a grey model): no 'stats'"
    _, out, _ = _export(tmp_path, *CASES[0])
    cfg = json.loads((out/'config.json').read_text())
    cfg['pretrained_cfg'].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (out/'config.json').write_text(json.dumps(cfg))
    r = read_timm_export(out)
    assert 'stats' not in r and r['n_in'] == 1 and r['size'] == 32
