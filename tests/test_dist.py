"""Every loss in 2 processes (gloo, CPU) on two halves of a batch against 1 process on the whole batch: the mean of the
processes' loss values equals the single-process loss, and the parameter gradients after DDP's averaging equal the
single-process gradients (a gather whose backward does not sum over processes, or a loss that is not scaled for DDP's
average, is off here by the world size or by the missing cross terms)"""
import os, socket, subprocess, sys
import numpy as np, pytest, torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_cases

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason='torch.distributed is not available')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def run_processes(names, outdir, world=2, timeout=120, tries=3):
    """`_run_processes`, tried again on a fresh port when a process fails (a port taken between `_free_port` and gloo's
    bind). Each try writes into a folder of its own: a case that resumes from files (k-fold's finished folds) must not
    find a failed try's output"""
    fails = []
    for i in range(tries):
        d = os.path.join(str(outdir), f'try{i}'); os.makedirs(d)
        try: return _run_processes(names, d, world, timeout)
        except AssertionError as e:
            fails.append(f'try {i}: {e}')
            if i == tries - 1: raise AssertionError('\n\n'.join(fails)) from e

def _run_processes(names, outdir, world=2, timeout=120):
    "Run `dist_cases.py` in `world` processes for the cases `names`; {(case, rank): dict of arrays}"
    port, env = _free_port(), {**os.environ, 'PYTHONPATH': os.path.dirname(HERE) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                               'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, 'dist_cases.py'), str(r), str(world), str(port), str(outdir),
                               ','.join(names)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outs = []
    for p in procs:
        try: outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs: q.kill()
            raise
    for p, o in zip(procs, outs): assert p.returncode == 0, o
    res = {}
    for n in names:
        for r in range(world):
            with np.load(os.path.join(outdir, f'{n}_{r}.npz'), allow_pickle=False) as f: res[n, r] = dict(f)
    return res


GLOBAL_LOSS = {'barlow_twins', 'vicreg'}   # losses of global statistics: every process returns the global loss itself


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
    return run_processes(sorted(dist_cases.CASES), tmp_path_factory.mktemp('dist'))


@pytest.mark.parametrize('name', sorted(dist_cases.CASES))
def test_two_processes_match_one(two_processes, name, tmp_path, monkeypatch):
    monkeypatch.setenv('SSFA_DIST_OUT', str(tmp_path))
    one = dist_cases.CASES[name]()          # this process: no torch.distributed, the whole batch
    for r in range(2):
        got = two_processes[name, r]
        assert set(got) == set(one), (name, sorted(got), sorted(one))
        if name == 'kfold':       # each process trained 2 of the 4 folds: disjoint halves of the 40 items
            assert int(got['local_folds']) == 2 and int(one['local_folds']) == 4 and got['oof_file']
            other = two_processes[name, 1 - r]['local_held']
            assert not set(got['local_held']) & set(other) and sorted(set(got['local_held']) | set(other)) == sorted(one['local_held'])
        if 'local_seen' in one:   # each process embedded its own slice only: 6 of the 11 items (padded to 12)
            assert int(got['local_seen']) == 6 and int(one['local_seen']) == 11, (got['local_seen'], one['local_seen'])
        if 'grads' not in one: continue
        np.testing.assert_allclose(got['mean_loss'], one['loss'], rtol=1e-10, atol=1e-12, err_msg=f'{name}: loss, rank {r}')
        np.testing.assert_allclose(got['grads'], one['grads'], rtol=1e-8, atol=1e-12, err_msg=f'{name}: gradients, rank {r}')
        if name in GLOBAL_LOSS: np.testing.assert_allclose(got['loss'], one['loss'], rtol=1e-10, err_msg=f'{name}: loss, rank {r}')
    for r in range(2):
        got = two_processes[name, r]
        for k in {k for k in one if not k.startswith('local_')} - {'loss', 'mean_loss', 'grads'}:   # buffers (DINO's centre: float32), tables
            if one[k].dtype.kind not in 'fc': np.testing.assert_array_equal(got[k], one[k], err_msg=f'{name}: {k}, rank {r}'); continue
            np.testing.assert_allclose(got[k], one[k], rtol=1e-6, atol=1e-5 if name == 'kfold' else 1e-9, err_msg=f'{name}: {k}, rank {r}')
