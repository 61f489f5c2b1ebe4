"Context prediction: the neighbour sits where its label says, too-small images, training and transfer"
import pytest, torch
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from self_supervised_fa.context import *
from self_supervised_fa.pretext.patches import NEIGHBOUR_OFFSETS, NEIGHBOUR_NAMES
from helpers import PRECISIONS, tiny_dls, pretrain_and_transfer, skip_bf16_without_right_gradients

# independent table: label -> (rows, cols) offset of the neighbour from the centre, in grid steps
_OFFSETS = {'top-left': (-1, -1), 'top': (-1, 0), 'top-right': (-1, 1), 'left': (0, -1), 'right': (0, 1),
            'bottom-left': (1, -1), 'bottom': (1, 0), 'bottom-right': (1, 1)}


@pytest.mark.parametrize('jitter', [0, 2])
def test_neighbour_sits_where_its_label_says(jitter):
    x = tiny_dls(bs=32, n_in=3, size=80).one_batch()[0]
    cb = ContextCallback(jitter=jitter)
    torch.manual_seed(0)
    params = cb.generate_params(x)
    (pairs, y), t, g = cb.apply(x, params), params['tile'], params['gap']
    assert pairs.shape == (32, 2, 3, t, t) and y.shape == (32,) and set(y.tolist()) <= set(range(8)) and len(y.unique()) > 4
    step = t + g + 2*jitter
    for b in range(32):
        r, c = params['pos'][b, 4].tolist()
        assert torch.equal(pairs[b, 0], x[b, :, r:r+t, c:c+t])
        dy, dx = _OFFSETS[NEIGHBOUR_NAMES[y[b]]]
        er, ec = r + dy*step, c + dx*step                      # the nominal neighbour corner
        if jitter == 0: assert torch.equal(pairs[b, 1], x[b, :, er:er+t, ec:ec+t])
        else:           # somewhere within the jitter of it
            hits = [(i, j) for i in range(er-2*jitter, er+2*jitter+1) for j in range(ec-2*jitter, ec+2*jitter+1)
                    if 0 <= i <= 80-t and 0 <= j <= 80-t and torch.equal(pairs[b, 1], x[b, :, i:i+t, j:j+t])]
            assert hits, f"neighbour {b} ({NEIGHBOUR_NAMES[y[b]]}) not found near its expected corner"
    assert NEIGHBOUR_OFFSETS.tolist() == [list(_OFFSETS[n]) for n in NEIGHBOUR_NAMES]


def test_gap_separates_the_pair():
    x = torch.randn(64, 1, 64, 64)
    cb = ContextCallback(jitter=2, gap=6)
    p = cb.generate_params(x)
    cn = p['pos'][torch.arange(64), 4], p['pos'][torch.arange(64), [int(l) + (int(l) >= 4) for l in p['label']]]
    d = (cn[1] - cn[0]).abs().amax(1)        # the larger of the row and column distances
    assert (d >= p['tile'] + 6).all()


def test_too_small_images_error():
    with pytest.raises(ValueError, match=r'28x28.*context grid.*at least 38x38.*Resize\(38\)'):
        ContextCallback().make_batch(torch.zeros(2, 1, 28, 28))
    ContextCallback().make_batch(torch.zeros(2, 1, 38, 38))


@PRECISIONS
def test_context_trains_and_transfers(tmp_path, precision):
    skip_bf16_without_right_gradients(precision)   # the 64-px pairs' patches reach layer4 as 1-px maps
    # 200 digits, 4 epochs at 1e-3: accuracy ~0.5 with 1-4 threads (100 digits for 3 epochs stayed at chance)
    dls = tiny_dls(n_per_class=20, size=64)
    model = create_context_model('test_resnet', n_in=1)
    before, after = pretrain_and_transfer(dls, model, ContextCallback(), CrossEntropyLossFlat(), tmp_path,
                                          cls_dls=tiny_dls(), epochs=4, lr=1e-3, metrics=accuracy, precision=precision)
    assert after[1] > 1/8 + 0.15, f"context accuracy {after[1]:.3f} is no better than chance (1/8)"


def test_tile_norm_pairs():
    "each patch of a pair is standardised on its own; positions and labels are those of the raw task"
    x = torch.rand(8, 1, 64, 64) * 5
    raw, normed = ContextCallback(), ContextCallback(tile_norm=True)
    with raw.seeded(1): a, ya = raw.make_batch(x)
    with normed.seeded(1): b, yb = normed.make_batch(x)
    assert torch.equal(ya, yb)
    flat = a.flatten(2)
    torch.testing.assert_close(b.flatten(2), (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, unbiased=False, keepdim=True),
                               atol=1e-5, rtol=1e-4)
