"""The benchmarks' resumable cells: the committed cells file holds results only, the encoder sits in the (gitignored)
cache, and a missing encoder file is retrained instead of crashing (a fresh checkout has the cells but not the cache)."""
import json, sys
from pathlib import Path
import torch
from torch import nn
from bench_utils import Cells, pretrained_cell
from self_supervised_fa.encoders.files import load_encoder


def test_pretrained_cell_results_only_and_retrains_missing_encoder(tmp_path):
    cells, cache, calls = Cells(tmp_path/'cells.json'), tmp_path/'cache', []
    def train():
        calls.append(1)
        torch.manual_seed(0)
        return nn.Linear(3, 2), dict(acc=0.5)
    res, path = pretrained_cell(cells, 'pretext/a/b/s0', cache, train)
    assert res == dict(acc=0.5) and len(calls) == 1
    saved = json.loads((tmp_path/'cells.json').read_text())
    assert saved == {'pretext/a/b/s0': dict(acc=0.5)}   # no paths in the committed file
    assert path().exists() and len(calls) == 1          # the encoder is there: no retraining
    # a fresh checkout: the cells file, no cache. The cached result comes back without training...
    path().unlink()
    res2, path2 = pretrained_cell(Cells(tmp_path/'cells.json'), 'pretext/a/b/s0', cache, train)
    assert res2 == res and len(calls) == 1
    # ...and asking for the encoder retrains it instead of raising
    p = path2()
    assert p.exists() and len(calls) == 2
    torch.manual_seed(0); expected = nn.Linear(3, 2).weight
    assert torch.equal(load_encoder(p, nn.Linear(3, 2)).weight, expected)   # the retrained weights were saved


def test_old_cells_with_encoder_paths_are_read_as_results(tmp_path):
    "A cell written before (with an `encoder` path into a lost folder) gives its results; the path is never used"
    (tmp_path/'cells.json').write_text(json.dumps({'k': dict(acc=1.0, encoder='scratch/gone.safetensors')}))
    res, path = pretrained_cell(Cells(tmp_path/'cells.json'), 'k', tmp_path/'cache', lambda: (nn.Linear(1, 1), dict(acc=1.0)))
    assert res == dict(acc=1.0)
    assert path().parent == tmp_path/'cache' and path().exists()
