"Patch cutting shared by jigsaw and context prediction: geometry, one-gather cutting, sizes and the context-free network"
import itertools, numpy as np, pytest, torch
from fastai.torch_core import TensorImage
from self_supervised_fa.pretext.patches import *


def test_cut_patches_equals_slicing():
    g = torch.Generator().manual_seed(0)
    x = TensorImage(torch.randn(3, 2, 40, 50, generator=g))
    pos = torch.stack([torch.randint(0, 40-7+1, (3, 5), generator=g), torch.randint(0, 50-7+1, (3, 5), generator=g)], -1)
    p = cut_patches(x, pos, 7)
    assert type(p) is torch.Tensor and p.shape == (3, 5, 2, 7, 7)
    for b, k in itertools.product(range(3), range(5)):
        r, c = pos[b, k].tolist()
        assert torch.equal(p[b, k], x[b, :, r:r+7, c:c+7])
    with pytest.raises(ValueError, match='outside the 40x50'): cut_patches(x, pos + 40, 7)
    with pytest.raises(ValueError, match=r'\(3, K, 2\)'): cut_patches(x, pos[:2], 7)


@pytest.mark.parametrize('h,w,tile,gap,jitter', [(64, 64, 16, 2, 2), (80, 70, 10, 5, 3), (30, 30, 10, 0, 0)])
def test_grid_geometry(h, w, tile, gap, jitter):
    pos = grid_positions(64, h, w, tile, 3, gap, jitter, generator=torch.Generator().manual_seed(1))
    assert pos.shape == (64, 9, 2)
    assert pos.min() >= 0 and (pos[..., 0] + tile).max() <= h and (pos[..., 1] + tile).max() <= w
    grid = pos.view(64, 3, 3, 2)
    # neighbouring tiles never touch closer than `gap`, never drift further than the cell allows
    dx = grid[:, :, 1:, 1] - grid[:, :, :-1, 1]; dy = grid[:, 1:, :, 0] - grid[:, :-1, :, 0]
    for d in (dx, dy):
        assert d.min() >= tile + gap and d.max() <= tile + gap + 4*jitter
    # tiles in a row share (within jitter) their row, tiles in a column their column
    assert (grid[..., 0].amax(2) - grid[..., 0].amin(2)).max() <= 2*jitter
    assert (grid[..., 1].amax(1) - grid[..., 1].amin(1)).max() <= 2*jitter
    if jitter: assert len((pos - pos[:, :1]).unique()) > 9          # the jitter really moves tiles
    assert torch.equal(pos, grid_positions(64, h, w, tile, 3, gap, jitter, generator=torch.Generator().manual_seed(1)))


def test_sizes_and_errors():
    assert grid_side(16, 3, 2, 2) == 64 and fit_tile(64, 3, 2, 2) == 16
    for side in range(38, 200, 3):          # the auto tile is the largest that fits
        t, g = resolve_tile(side, side, 3, jitter=1, gap_frac=0.5)
        assert g == int(0.5*t) and grid_side(t, 3, g, 1) <= side < grid_side(t+1, 3, int(0.5*(t+1)), 1)
    with pytest.raises(ValueError, match=r'28x28 px are too small for the jigsaw grid.*need at least 38x38.*sample_dls\(size=38\)'):
        resolve_tile(28, 28, 3, jitter=2, gap_frac=0.125, what='jigsaw grid')
    assert resolve_tile(38, 38, 3, jitter=2, gap_frac=0.125, what='jigsaw grid') == (8, 1)   # the size named is enough
    with pytest.raises(ValueError, match='64x30 px.*at least 64x64'): grid_positions(2, 64, 30, 16, 3, 2, 2)


def test_centre_and_neighbours():
    pos = grid_positions(8, 64, 64, 12, 3, 6, 1)
    labels = torch.arange(8)
    cn = centre_neighbour_positions(pos, labels)
    assert torch.equal(cn[:, 0], pos[:, 4])
    for b, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS.tolist()):   # independent: the grid cell at (1+dy, 1+dx)
        assert torch.equal(cn[b, 1], pos.view(8, 3, 3, 2)[b, 1+dy, 1+dx])
    assert len(NEIGHBOUR_NAMES) == 8 and NEIGHBOUR_NAMES[neighbour_cell(torch.tensor(6)) - 1] == 'bottom'
    with pytest.raises(ValueError, match='0..7'): centre_neighbour_positions(pos, labels + 1)


def test_tile_canvas():
    tiles = torch.arange(9.).view(9, 1, 1, 1).expand(9, 1, 4, 4)
    cv = tile_canvas(tiles, 3, pad=1, fill=-1.)
    assert cv.shape == (1, 14, 14)
    assert cv[0, 5, 10] == 5 and cv[0, 4, 4] == -1 and cv[0, 13, 13] == 8


class _Body(torch.nn.Module):
    "Stand-in encoder: embed = per-channel mean and max"
    embed_dim = 4
    def embed(self, x): return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


def test_patch_set_classifier_is_context_free():
    m = PatchSetClassifier(_Body(), n_patches=3, n_out=5).eval()
    x = torch.randn(4, 3, 2, 8, 8)
    out = m(x)
    assert out.shape == (4, 5)
    # independent: each patch embedded alone, projections concatenated in input order
    ref = m.head(torch.cat([m.proj(m.encoder.embed(x[:, k])) for k in range(3)], 1))
    assert torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match=r'\(B, 3, C, h, w\)'): m(torch.randn(4, 2, 2, 8, 8))
    enc, rest = patch_set_splitter(m)
    assert len(enc) == 0 and len(rest) == len(list(m.parameters()))


def test_tile_norm_standardises_each_tile_of_the_slices():
    "with tile_norm, each tile is the image slice at its corner, standardised on its own (numpy, written out)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 40, 40, generator=g) * 3 + 1
    pos = grid_positions(4, 40, 40, 8, 3, 2, 1, generator=g)
    cb = PatchGridCallback(9, tile_norm=True)
    tiles = cb.cut(x, pos, 8)
    for b in range(4):
        for k in range(9):
            r, c = pos[b, k].tolist()
            sl = x[b, :, r:r+8, c:c+8].numpy().astype(np.float64)
            np.testing.assert_allclose(tiles[b, k].numpy(), (sl - sl.mean()) / sl.std(), atol=1e-4)
    assert torch.equal(PatchGridCallback(9).cut(x, pos, 8), cut_patches(x, pos, 8))   # off by default here: the raw slices
    with pytest.raises(ValueError, match=r'\(B, K, C, h, w\)'): normalize_tiles(torch.zeros(2, 3, 4, 4))
