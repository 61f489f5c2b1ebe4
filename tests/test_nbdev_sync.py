"CI guards: the exported modules match the notebooks, and the notebooks are clean (nbdev_clean changes nothing)"
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

pytest.importorskip('nbdev', reason='the sync checks need the dev extra (nbdev)')

ROOT = Path(__file__).resolve().parents[1]
LIB = 'self_supervised_fa'


@pytest.fixture(scope='module')
def copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp('repo')
    for name in ['nbs', LIB]: shutil.copytree(ROOT/name, dest/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    for name in ['settings.ini', 'setup.py', 'README.md']: shutil.copy(ROOT/name, dest/name)
    return dest


def _run(args, cwd):
    r = subprocess.run([sys.executable, '-c', args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_modules_match_notebooks(copy):
    _run('from nbdev.doclinks import nbdev_export; nbdev_export()', copy)
    rel = [p.relative_to(copy/LIB) for p in sorted((copy/LIB).rglob('*.py')) if '__pycache__' not in p.parts]
    changed = [str(r) for r in rel if not (ROOT/LIB/r).exists() or (copy/LIB/r).read_text() != (ROOT/LIB/r).read_text()]
    assert not changed, f"modules differ from their notebooks: {changed}; run nbdev_export and commit both"


def test_notebooks_clean(copy):
    _run('from nbdev.clean import nbdev_clean; nbdev_clean()', copy)
    dirty = [str(p.relative_to(copy)) for p in sorted((copy/'nbs').rglob('*.ipynb'))
             if json.loads(p.read_text()) != json.loads((ROOT/p.relative_to(copy)).read_text())]
    assert not dirty, f"notebooks not clean: {dirty}; run nbdev_clean and commit"
