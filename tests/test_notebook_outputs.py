"""The notebooks are the documentation: those that show a method, a pretext task, an evaluation or a label tool keep the
picture of a real run in their saved outputs (nbdev_clean keeps outputs; a notebook saved without them fails here)."""
import json
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1]/'nbs'
PICTURES = (['augment/00_ops', 'augment/01_views', 'augment/02_multicrop', 'encoders/04_classifier',
             'evaluate/00_embeddings', 'evaluate/01_probes', 'evaluate/02_monitor', 'evaluate/03_label_efficiency',
             'tutorials/own_data', 'tutorials/noisy_labels']
            + [f'siamese/{n}' for n in ('10_simclr', '11_barlow_twins', '12_byol', '13_simsiam', '14_moco', '15_vicreg', '16_swav',
                                        '17_dino')]
            + [f'pretext/{n}' for n in ('10_rotnet', '11_colorize', '12_jigsaw', '13_context', '14_inpaint', '15_superres')]
            + [f'labels/{n}' for n in ('00_noise', '01_pseudo_label', '02_soft_label', '03_plc', '04_suspects', '05_sheets',
                                       '06_duplicates')])
TABLES = ['labels/07_relabel']   # its result is the relabel table

def _outputs(name):
    nb = json.loads((NBS/f'{name}.ipynb').read_text())
    return [(i, o) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' for o in c.get('outputs', [])]

@pytest.mark.parametrize('name', PICTURES)
def test_notebook_keeps_its_picture(name):
    pics = [i for i, o in _outputs(name) if 'image/png' in o.get('data', {})]
    assert pics, f"nbs/{name}.ipynb has no saved picture: run it (python -m execnb or Jupyter), then nbdev_clean, and commit the outputs"

@pytest.mark.parametrize('name', TABLES)
def test_notebook_keeps_its_table(name):
    assert any('text/html' in o.get('data', {}) or 'text/plain' in o.get('data', {}) for _, o in _outputs(name)), \
        f"nbs/{name}.ipynb has no saved table output"

@pytest.mark.parametrize('path', sorted(NBS.rglob('*.ipynb')), ids=lambda p: str(p.relative_to(NBS)))
def test_saved_outputs_hold_no_errors(path):
    "A saved traceback is a broken example; a saved output with this machine's paths leaks where it ran"
    nb = json.loads(path.read_text())
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            assert o.get('output_type') != 'error', f"{path.name} cell {i} saved an error: {o.get('ename')}: {o.get('evalue')}"
            text = ''.join(o.get('text', '')) if isinstance(o.get('text', ''), list) else o.get('text', '')
            assert 'Traceback (most recent call last)' not in text, f"{path.name} cell {i} saved a traceback"
