"""Training as a user launches it: `torchrun --nproc_per_node 2 tests/dist_fit.py` (gloo, CPU) runs `fit_one_cycle` of
SimCLR, BYOL and MoCo v2 inside `dist.distrib_ctx` (fastai + Accelerate, with the gloo adapter of fastai's loaders).
Both processes end with identical weights and buffers (teacher, queue), finite losses that fall (SimCLR, BYOL), and
rank 0 alone wrote each encoder file, holding the trained encoder, and
the checkpoint, whose weights (no DDP prefix) are the trained model's"""
import os, subprocess, sys
import numpy as np, pytest

pytest.importorskip('accelerate', reason="fastai's distributed training needs accelerate")
HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ('simclr', 'byol', 'moco_v2')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist_fit')
    env = {**os.environ, 'PYTHONPATH': os.path.dirname(HERE) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        os.path.join(HERE, 'dist_fit.py'), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = {}
    for m in METHODS:
        for rk in range(2):
            with np.load(out / f'{m}_{rk}.npz', allow_pickle=False) as f: res[m, rk] = dict(f)
    for rk in range(2):
        for m in ('soft_label', 'plc'):
            with np.load(out / f'{m}_{rk}.npz', allow_pickle=False) as f: res[m, rk] = dict(f)
    return out, res


@pytest.mark.parametrize('method', METHODS)
def test_two_process_fit(trained, method):
    from self_supervised_fa.encoders.files import load_encoder
    from self_supervised_fa.core.checkpoint import read_checkpoint
    out, res = trained
    a, b = res[method, 0], res[method, 1]
    assert set(a) == set(b)
    for k in a:
        if k.startswith('w/'): np.testing.assert_array_equal(a[k], b[k], err_msg=f'{method}: {k} differs between the processes')
    assert np.isfinite(a['loss']).all(), a['loss']
    if method != 'moco_v2': assert a['loss'][-1] < a['loss'][0] - 0.1, a['loss']   # seeds 0-2 (SSFA_TEST_SEED): falls by 0.16-0.9; MoCo's rises while real keys replace the queue's random ones
    files = sorted(p.name for p in out.iterdir() if p.name.startswith(f'{method}_encoder'))
    assert files == [f'{method}_encoder_rank0.safetensors'], files
    enc = load_encoder(out / files[0])
    for k, v in enc.state_dict().items(): np.testing.assert_array_equal(v.double().numpy(), a[f'w/encoder.{k}'])
    ckpts = sorted(p.name for p in out.iterdir() if p.name.startswith(f'{method}_checkpoint'))
    assert ckpts == [f'{method}_checkpoint_rank0.safetensors'], ckpts
    tensors, meta = read_checkpoint(out / ckpts[0])   # the last epoch's weights, without DDP's `module.` prefix
    assert meta['epoch'] == len(a['loss'])
    weights = {k[len('model.'):]: v for k, v in tensors.items() if k.startswith('model.')}
    assert set(weights) == {k[2:] for k in a if k.startswith('w/')}
    for k, v in weights.items(): np.testing.assert_array_equal(v.double().numpy(), a[f'w/{k}'])


def test_soft_label_targets_in_two_processes(trained):
    "Each process trains on its half of the items; every target is the single-process blend of that item's label and probabilities"
    from self_supervised_fa.labels.soft_label import blend_targets
    import torch
    _, res = trained
    a, b = res['soft_label', 0], res['soft_label', 1]
    np.testing.assert_array_equal(a['probs'], b['probs']); np.testing.assert_array_equal(a['labels'], b['labels'])
    n, epochs = len(a['labels']), 2
    for r in (a, b):
        want = blend_targets(torch.as_tensor(r['labels'][r['idx']]), torch.as_tensor(r['probs'][r['idx']]), 0.3)
        np.testing.assert_allclose(r['targ'], want.numpy(), rtol=1e-6)
        assert len(r['idx']) == epochs * (n // 2 // 6) * 6, len(r['idx'])   # a shard of 20 items per epoch, batches of 6
    ep = lambda r, e: set(r['idx'].reshape(epochs, -1)[e].tolist())
    for e in range(epochs): assert not ep(a, e) & ep(b, e), e   # the shards of one epoch are disjoint (40 items: no padding)


def test_plc_tables_in_two_processes(trained):
    "Each process predicts its half of the items; after every epoch both hold every item's predictions and given label, the same"
    _, res = trained
    a, b = res['plc', 0], res['plc', 1]
    for k in a: np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a['has_probs'].all()                                 # 40 items, 4 batches of 5 per process: every item seen
    np.testing.assert_array_equal(a['given'], a['item_labels'])
    np.testing.assert_allclose(a['probs'].sum(1), 1, rtol=1e-5)


def test_notebook_launcher(tmp_path):
    "`accelerate.notebook_launcher(train, num_processes=2)` (a notebook's launch, e.g. Kaggle's two GPUs) trains in 2 processes"
    env = {**os.environ, 'PYTHONPATH': os.path.dirname(HERE) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, os.path.join(HERE, 'dist_notebook_launch.py'), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['weights_0_2.npy', 'weights_1_2.npy']
    a, b = (np.load(tmp_path / f'weights_{rk}_2.npy', allow_pickle=False) for rk in range(2))
    np.testing.assert_array_equal(a, b)
