"Jigsaw: permutation set, inverse permutation re-assembles the tiles, too-small images, training and transfer"
import itertools, math, numpy as np, pytest, torch
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from self_supervised_fa.jigsaw import *
from self_supervised_fa.pretext.patches import cut_patches, patch_set_splitter
from helpers import PRECISIONS, tiny_dls, pretrain_and_transfer, skip_bf16_without_right_gradients


def _min_hamming_np(P):
    "Independent: smallest pairwise Hamming distance by brute force over pairs"
    P = np.asarray(P)
    return min(int((P[i] != P[j]).sum()) for i, j in itertools.combinations(range(len(P)), 2))


@pytest.mark.parametrize('n_perms', [10, 64])
def test_permutation_set(n_perms):
    P = hamming_permutations(n_perms, 9, seed=0)
    assert P.shape == (n_perms, 9) and P.dtype == torch.long
    assert len(np.unique(P.numpy(), axis=0)) == n_perms
    assert all(sorted(p) == list(range(9)) for p in P.tolist())
    assert torch.equal(P, hamming_permutations(n_perms, 9, seed=0)) and not torch.equal(P, hamming_permutations(n_perms, 9, seed=3))
    ours = _min_hamming_np(P)
    assert min_hamming(P) == ours
    rng = np.random.default_rng(0)   # random sets of the same size, drawn independently of the library
    rand = max(_min_hamming_np([rng.permutation(9) for _ in range(n_perms)]) for _ in range(5))
    assert ours >= rand and ours >= 5, (ours, rand)


def test_permutation_set_errors_and_large_grids():
    with pytest.raises(ValueError, match='only 24 permutations'): hamming_permutations(30, 4)
    with pytest.raises(ValueError, match='at least 2'): hamming_permutations(1)
    P = hamming_permutations(20, 16, n_candidates=5000)       # 4x4 grid: sampled candidates
    assert P.shape == (20, 16) and len(P.unique(dim=0)) == 20 and min_hamming(P) >= 12


def test_inverse_permutation_reassembles_tiles():
    x = tiny_dls(size=64).one_batch()[0]
    cb = JigsawCallback(n_perms=24)
    torch.manual_seed(0)
    params = cb.generate_params(x)
    inp, y = cb.apply(x, params)
    t = params['tile']
    assert inp.shape == (x.shape[0], 9, 1, t, t) and y.shape == (x.shape[0],) and len(y.unique()) > 3
    orig = cut_patches(x, params['pos'], t)
    for b in range(x.shape[0]):
        perm = cb.perms[y[b]]
        assert torch.equal(inp[b][perm.argsort()], orig[b])
        for k in range(9):      # independent: slot k holds the image sliced at tile perm[k]'s corner
            r, c = params['pos'][b, perm[k]].tolist()
            assert torch.equal(inp[b, k], x[b, :, r:r+t, c:c+t])
    # make_batch under a seed is reproducible
    with cb.seeded(5): a = cb.make_batch(x)
    with cb.seeded(5): b = cb.make_batch(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_too_small_images_error():
    with pytest.raises(ValueError, match=r'28x28.*jigsaw grid.*at least 38x38.*Resize\(38\)'):
        JigsawCallback(n_perms=4).make_batch(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match='at least 76x76'):
        JigsawCallback(n_perms=4, tile=20).make_batch(torch.zeros(2, 1, 64, 64))


@PRECISIONS
def test_jigsaw_trains_and_transfers(tmp_path, precision):
    skip_bf16_without_right_gradients(precision)   # 11-px tiles reach the last stages as 1-px maps
    dls = tiny_dls(n_per_class=10, size=48)     # 11-px tiles: small enough to train in seconds
    model = create_jigsaw_model('test_resnet', n_perms=8, n_in=1)
    assert model.encoder.arch == 'test_resnet'
    before, after = pretrain_and_transfer(dls, model, JigsawCallback(n_perms=8), CrossEntropyLossFlat(), tmp_path,
                                          cls_dls=tiny_dls(), epochs=3, lr=1e-2, metrics=accuracy, precision=precision)
    assert after[1] > 1/8 + 0.1, f"jigsaw accuracy {after[1]:.3f} is no better than chance (1/8)"


def test_tile_norm_keeps_the_permutation():
    "per-tile normalisation changes each tile's levels, not which tile goes where"
    x = torch.rand(6, 1, 64, 64) * 5
    raw, normed = JigsawCallback(n_perms=24), JigsawCallback(n_perms=24, tile_norm=True)
    with raw.seeded(3): a, ya = raw.make_batch(x)
    with normed.seeded(3): b, yb = normed.make_batch(x)
    assert torch.equal(ya, yb)
    flat = a.flatten(2)
    want = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(b.flatten(2), want, atol=1e-5, rtol=1e-4)
