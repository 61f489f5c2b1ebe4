"timm bodies across families and channel counts; first-layer adaptation; safe encoder files; classifier"
import copy, math
import pytest, torch, timm
from torch import nn
from self_supervised_fa.encoders.body import *
from self_supervised_fa.encoders.stages import *
from self_supervised_fa.encoders.classifier import *
from self_supervised_fa.encoders.files import *

ARCHS = ['resnet18', 'resnet50', 'seresnext50_32x4d', 'efficientnet_b0', 'convnext_atto', 'regnety_002',
         'mobilenetv3_small_100', 'vit_tiny_patch16_224']


def _first_conv(body): return body.model.get_submodule(body.model.pretrained_cfg['first_conv'])


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('n_in', [1, 3, 4])
def test_body_every_arch(arch, n_in):
    torch.manual_seed(0)
    body = create_timm_body(arch, n_in=n_in).eval()
    size = timm.create_model(arch, pretrained=False).pretrained_cfg['input_size'][-1] if 'vit' in arch else 64
    x = torch.randn(2, n_in, size, size)
    with torch.no_grad(): feats = body(x); emb = body.pool(feats)
    assert body.n_in == n_in and _first_conv(body).in_channels == n_in
    chan = feats.shape[1] if feats.ndim == 4 else feats.shape[-1]
    assert chan == body.num_features            # declared size = what forward returns
    assert emb.shape == (2, body.embed_dim)     # declared pooled size = what embed returns
    assert torch.isfinite(emb).all()


def test_mobilenet_sizes_differ():
    b = create_timm_body('mobilenetv3_small_100', n_in=3)
    assert (b.num_features, b.embed_dim) == (576, 1024)


@pytest.mark.parametrize('arch', ['resnet18', 'efficientnet_b0', 'convnext_atto', 'vit_tiny_patch16_224'])
def test_first_layer_adaptation(arch):
    "adapt_first_conv against the original 3-channel weights of the same random model (no download)"
    m3 = timm.create_model(arch, num_classes=0)
    first = m3.pretrained_cfg['first_conv']
    w = m3.get_submodule(first).weight.detach().clone()
    m1, m4 = adapt_first_conv(copy.deepcopy(m3), 1), adapt_first_conv(copy.deepcopy(m3), 4)
    torch.testing.assert_close(m1.get_submodule(first).weight, w.sum(1, keepdim=True))
    # 4 channels: the 3 filters repeated ([r,g,b,r]) and scaled by 3/4
    torch.testing.assert_close(m4.get_submodule(first).weight, torch.cat([w, w[:, :1]], 1) * 3 / 4)
    for k, v in m3.state_dict().items():   # every other tensor is untouched
        if not k.startswith(first + '.weight'): torch.testing.assert_close(m1.state_dict()[k], v)
    assert TimmEncoder(m4, arch=arch).n_in == 4


def test_grey_image_same_features_any_channels():
    "A grey image over 6 channels (a multiple of 3) gives the 3-channel network's features: the 3/n_in scaling"
    m3 = timm.create_model('resnet18', num_classes=0).eval()
    m6, m1 = adapt_first_conv(copy.deepcopy(m3), 6), adapt_first_conv(copy.deepcopy(m3), 1)
    g = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = m3.forward_features(g.expand(-1, 3, -1, -1))
        torch.testing.assert_close(m6.forward_features(g.expand(-1, 6, -1, -1)), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m1.forward_features(g), ref, rtol=1e-4, atol=1e-4)   # summed filters: same for one channel


@pytest.mark.parametrize('arch', ['resnet18.a1_in1k', 'vit_tiny_patch16_224.augreg_in21k', 'convnext_atto.d2_in1k'])
def test_pretrained_tag_names_accepted_and_stored(tmp_path, arch):
    "Names with a pretrained tag (timm.list_pretrained) build without download when pretrained=False; the tag is kept"
    body = create_timm_body(arch, n_in=1)
    assert body.arch == arch and body.n_in == 1
    fn = save_encoder(body, tmp_path/'enc')
    assert read_encoder_metadata(fn)['arch'] == arch and load_encoder(fn).arch == arch


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match=r"no pretrained tag 'a1_in1kk' for resnet18; its tags: \[.*'a1_in1k'"):
        create_timm_body('resnet18.a1_in1kk')


def test_unknown_arch_lists_close_names():
    with pytest.raises(ValueError, match=r"resnet18"): create_timm_body('resnet181')


@pytest.mark.parametrize('cut', [0, 99, -99])
def test_bad_int_cut(cut):
    with pytest.raises(ValueError, match=f'cut={cut}'): create_timm_body('resnet18', cut=cut)


def test_bad_cut_type():
    with pytest.raises(TypeError, match='cut must be'): create_timm_body('resnet18', cut='layer3')


def test_cut_features():
    b = create_timm_body('resnet18', cut=-4, n_in=1)   # conv1 .. layer2
    assert b.num_features == 128 and b(torch.randn(1, 1, 32, 32)).shape == (1, 128, 4, 4)
    assert b.embed(torch.randn(1, 1, 32, 32)).shape == (1, 128)
    fb = create_timm_body('resnet18', cut=lambda m: nn.Sequential(m.conv1, m.bn1, m.act1))
    assert fb.num_features == 64


@pytest.mark.parametrize('arch,n_in', [('resnet18', 1), ('vit_tiny_patch16_224', 3), ('mobilenetv3_small_100', 4)])
def test_save_load_round_trip(tmp_path, arch, n_in):
    body = create_timm_body(arch, n_in=n_in)
    for p in body.parameters(): p.data.normal_()          # weights no fresh init would give
    fn = save_encoder(body, tmp_path/'enc.safetensors')
    loaded = load_encoder(fn)                              # rebuilt from the file's metadata
    assert loaded.arch == arch and loaded.n_in == n_in
    for (k, v), (k2, v2) in zip(body.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert [p.name for p in tmp_path.iterdir()] == ['enc.safetensors']   # no temporary file left


def test_plain_state_dict_accepted(tmp_path):
    body = create_timm_body('resnet18', n_in=1)
    torch.save(body.state_dict(), tmp_path/'sd.pt')
    torch.save(body.model.state_dict(), tmp_path/'timm_sd.pt')   # keys without the 'model.' prefix
    for fn in ['sd.pt', 'timm_sd.pt']:
        b = load_encoder(tmp_path/fn, create_timm_body('resnet18', n_in=1))
        assert torch.equal(b.model.conv1.weight, body.model.conv1.weight)
    with pytest.raises(ValueError, match='does not say which architecture'): load_encoder(tmp_path/'sd.pt')


def test_pickled_module_refused(tmp_path):
    torch.save(create_timm_body('resnet18', n_in=1), tmp_path/'module.pt')   # a whole pickled module
    with pytest.raises(ValueError, match=r"weights_only=False\); save_encoder"):
        load_encoder(tmp_path/'module.pt', create_timm_body('resnet18', n_in=1))


def test_mismatched_keys_named(tmp_path):
    fn = save_encoder(create_timm_body('resnet18', n_in=1), tmp_path/'r18')
    with pytest.raises(KeyError, match=r"missing keys \['model\.layer1\.0\.bn3"):
        load_encoder(fn, create_timm_body('resnet50', n_in=1))
    with pytest.raises(ValueError, match=r'model.conv1.weight: file \(64, 1, 7, 7\) vs encoder \(64, 3, 7, 7\)'):
        load_encoder(fn, create_timm_body('resnet18', n_in=3))


def test_classifier_freezes_body(tmp_path):
    from self_supervised_fa.data.sample import sample_dls
    dls = sample_dls(n_per_class=3, bs=10)
    fn = save_encoder(create_timm_body('resnet18', n_in=1), tmp_path/'e')
    learn = classifier_learner(dls, 'resnet18', encoder_path=fn)
    body, head = learn.model.encoder, learn.model.head
    assert len(learn.opt.param_groups) == 2
    assert not body.model.conv1.weight.requires_grad and all(p.requires_grad for p in head.parameters())
    before = body.model.conv1.weight.detach().clone()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert torch.equal(before, body.model.conv1.weight)   # frozen: not trained
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert not torch.equal(before, body.model.conv1.weight)
    assert learn.model(dls.one_batch()[0]).shape == (10, 10)


# --- untrusted files: nothing read from a file is evaluated or unpickled ---------------------------------------------

def _tensors(body): return {k: v.contiguous() for k, v in body.state_dict().items()}

GOOD_META = {'format': 'self_supervised_fa.encoder', 'arch': 'resnet18', 'n_in': '1', 'cut': 'None'}

@pytest.mark.parametrize('field', ['format', 'arch', 'n_in', 'cut', 'recipe'])
@pytest.mark.parametrize('payload', ["__import__('pathlib').Path({m!r}).touch()",
                                     "exec(\"open({m!r}, 'w').close()\")",
                                     "(lambda: open({m!r}, 'w'))()"])
def test_crafted_metadata_never_runs(tmp_path, field, payload):
    "A payload in any metadata field that would leave a marker file if evaluated: refused by name, marker absent"
    from safetensors.torch import save_file
    marker = tmp_path/'MARKER'
    meta = dict(GOOD_META, **{field: payload.format(m=str(marker))})
    save_file(_tensors(create_timm_body('resnet18', n_in=1)), str(tmp_path/'evil.safetensors'), metadata=meta)
    with pytest.raises(ValueError, match=f"metadata field '{field}'.*pass it, load_encoder\\(path, encoder="):
        load_encoder(tmp_path/'evil.safetensors')
    with pytest.raises(ValueError, match=f"metadata field '{field}'"): read_encoder_metadata(tmp_path/'evil.safetensors')
    assert not marker.exists()
    # with the body given, the metadata is not needed and the weights load
    assert load_encoder(tmp_path/'evil.safetensors', create_timm_body('resnet18', n_in=1)).n_in == 1
    assert not marker.exists()


@pytest.mark.parametrize('field,value', [('n_in', '0'), ('n_in', '1.0'), ('n_in', ' 1'), ('cut', 'custom'),
                                         ('cut', '-3 '), ('arch', 'resnet181'), ('arch', ''), ('format', 'other')])
def test_metadata_parsed_strictly(tmp_path, field, value):
    from safetensors.torch import save_file
    save_file(_tensors(create_timm_body('resnet18', n_in=1)), str(tmp_path/'e.safetensors'), metadata=dict(GOOD_META, **{field: value}))
    with pytest.raises(ValueError, match=f"metadata field '{field}'"): load_encoder(tmp_path/'e.safetensors')


def test_metadata_fields_round_trip(tmp_path):
    body = create_timm_body('resnet18', n_in=2, cut=-3)
    fn = save_encoder(body, tmp_path/'e', recipe={'method': 'simclr', 'epochs': 3, 'lr': 2e-3})
    assert read_encoder_metadata(fn) == dict(arch='resnet18', n_in=2, cut=-3, recipe={'method': 'simclr', 'epochs': 3, 'lr': 2e-3})
    assert load_encoder(fn).cut == -3


class _Payload:
    "Pickles to a call that leaves a marker file: what a hostile `torch.save` file would hold"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (str(self.marker), 'w'))


def test_pickle_payload_refused_and_never_runs(tmp_path):
    marker = tmp_path/'MARKER'
    torch.save({'model.conv1.weight': torch.zeros(1), 'x': _Payload(marker)}, tmp_path/'evil.pt')
    assert not marker.exists()
    with pytest.raises(ValueError, match='weights_only=True'): load_encoder(tmp_path/'evil.pt', create_timm_body('resnet18', n_in=1))
    assert not marker.exists()
