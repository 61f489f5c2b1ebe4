"""The house: families in layers with no import cycle, one job per module, the documented paths, the `all` facade, and
one place to add a method (the registry)"""
import ast, importlib, subprocess, sys, warnings
from pathlib import Path
import pytest
import self_supervised_fa
from self_supervised_fa.app.registry import METHODS, Method, register_method, method_table, method_learner

LIB = Path(self_supervised_fa.__file__).parent
# a family may import from its own layer and the layers below, never from above
LAYERS = dict(core=0, data=1, augment=2, encoders=2, siamese=3, pretext=3, evaluate=4, labels=5, app=6)
TOP = 7   # compat, all and the documented method paths
MAX_LINES = 300


def _modules():
    for p in sorted(LIB.rglob('*.py')):
        if p.name in ('__init__.py', '_modidx.py') or '__pycache__' in p.parts: continue
        yield '.'.join(p.relative_to(LIB).with_suffix('').parts), p


def _imports(mod:str, path:Path) -> set:
    "The library modules `mod` imports (relative or absolute, anywhere in the file)"
    pkg = mod.split('.')[:-1]
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level: base = pkg[:len(pkg) - n.level + 1] + (n.module.split('.') if n.module else [])
            elif n.module and n.module.startswith('self_supervised_fa'): base = n.module.split('.')[1:]
            else: continue
            if not n.module and n.level:   # `from . import x`
                base = [*base, n.names[0].name]
            out.add('.'.join(base))
    return {m for m in out if m}


def _layer(mod:str) -> int: return LAYERS.get(mod.split('.')[0], TOP) if '.' in mod else TOP


GRAPH = {mod: _imports(mod, p) for mod, p in _modules()}


def test_no_module_imports_a_higher_layer():
    up = [(m, d) for m, deps in GRAPH.items() for d in deps if _layer(d) > _layer(m)]
    assert not up, f"imports that point up the layers {LAYERS}: {up}"


def test_the_import_graph_has_no_cycle():
    state = {}
    def visit(m, stack):
        if state.get(m) == 'done': return
        if state.get(m) == 'open': raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}")
        state[m] = 'open'
        for d in sorted(GRAPH.get(m, ())): visit(d, stack + [m])
        state[m] = 'done'
    for m in GRAPH: visit(m, [])


def test_no_hidden_imports():
    "No module-level `__getattr__` facade or `importlib` lookup: every dependency is an import the graph test sees"
    hidden = [m for m, p in _modules() if any(isinstance(n, ast.FunctionDef) and n.name == '__getattr__'
                                              for n in ast.parse(p.read_text()).body) or 'import_module(' in p.read_text()]
    assert not hidden, f"modules with hidden imports: {hidden}"


def test_modules_are_small():
    big = {m: n for m, p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules past {MAX_LINES} lines (split them by job): {big}"


@pytest.mark.parametrize('mod', ['core.dist', 'data.folders', 'siamese.dino', 'labels.suspects', 'app.cli'])
def test_a_module_imports_first_in_a_fresh_interpreter(mod):
    "A module imported before any other (a hidden cycle fails only then)"
    r = subprocess.run([sys.executable, '-c', f'import self_supervised_fa.{mod}'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]


def test_every_method_has_its_documented_path():
    "`from self_supervised_fa.<method> import *` gives exactly what the method's module exports"
    paths = {m.path for m in METHODS.values()}
    for path in paths:
        shim, real = importlib.import_module(path), importlib.import_module(next(m.module for m in METHODS.values() if m.path == path))
        assert shim.__all__ == real.__all__, path
        assert all(getattr(shim, n) is getattr(real, n) for n in real.__all__), path
    top = {f'self_supervised_fa.{p.stem}' for p in LIB.glob('*.py') if p.stem not in ('__init__', '_modidx', 'all', 'compat')}
    assert top == paths, f"top-level modules that are no method's documented path: {top - paths}; paths missing: {paths - top}"


def test_the_names_users_know_stay_public():
    from self_supervised_fa.simclr import SimCLR, SimCLRCallback, create_simclr_model
    from self_supervised_fa.labels.soft_label import SoftLabelCB, SoftLabelCallback
    from self_supervised_fa.encoders.body import create_timm_body
    assert SimCLR is SimCLRCallback and SoftLabelCB is SoftLabelCallback
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # not deprecated: no warning
        SimCLR(); create_simclr_model(create_timm_body('test_resnet', n_in=1), n_in=1)


def test_all_gives_every_public_name_and_compat_gives_the_old_ones():
    ns = {}
    exec('from self_supervised_fa.all import *', ns)
    missing = {m: n for m, _ in _modules() if _layer(m) < TOP
               for n in importlib.import_module(f'self_supervised_fa.{m}').__all__ if n not in ns}
    assert not missing, f"names missing from self_supervised_fa.all: {missing}"
    assert 'TimmBody' not in ns and 'SimCLR' in ns and 'SoftLabelCB' in ns and 'create_timm_body' in ns
    from self_supervised_fa import compat
    with pytest.warns(FutureWarning, match='use as_encoder'): compat.get_encoder('test_resnet', 1)
    with pytest.warns(FutureWarning, match='use KNNMonitorCallback'):
        try: compat.KNNMonitor(None)
        except Exception: pass


def test_the_registry_holds_every_method_as_objects():
    assert len(METHODS) == 16
    for name, m in METHODS.items():
        assert callable(m.factory) and isinstance(m.callback, type), name
        assert m.kind in ('siamese', 'pretext') and m.about, name
        if m.kind == 'pretext':
            cb = m.callback(**m.callback_kwargs)
            assert (m.loss or cb.task_loss)() is not None and isinstance(cb.task_metrics(), list), name


@pytest.fixture
def toy(monkeypatch):
    "A toy method added through the registry alone: a SimCLR variant with its own callback"
    from self_supervised_fa.siamese.simclr import SimCLRCallback, create_simclr_model
    class ToyCallback(SimCLRCallback): "A toy method"
    monkeypatch.setitem(METHODS, 'toy', None)   # removed again after the test
    return register_method('toy', Method('the other view, as a toy', create_simclr_model, ToyCallback, lr=1e-3, epochs=1))


def test_a_method_added_to_the_registry_reaches_the_cli_the_demo_and_the_method_list(toy, capsys):
    from self_supervised_fa.app.cli import build_parser
    from self_supervised_fa.app.demo import available_methods
    pretrain = build_parser()._subparsers._group_actions[0].choices['pretrain']
    assert 'toy' in pretrain._option_string_actions['--method'].choices
    assert 'toy' in available_methods()
    assert '| `toy` | siamese | `from test_layout import *` | the other view, as a toy |' in method_table()
    from self_supervised_fa.data.sample import sample_dls
    learn = method_learner('toy', sample_dls(n_per_class=2, bs=10), 'test_resnet', model_kwargs=dict(hidden_size=16, projection_size=8))
    assert type(learn.cbs[-1]) is toy.callback and learn.model.encoder.n_in == 1


def test_register_method_refuses_what_is_not_a_method():
    from self_supervised_fa.siamese.simclr import create_simclr_model
    with pytest.raises(TypeError, match='MultiViewCallback or PretextCallback'):
        register_method('bad', Method('x', create_simclr_model, dict))
    with pytest.raises(ValueError, match='lower-case'):
        register_method('Bad Name', METHODS['simclr'])
    assert 'bad' not in METHODS


def test_every_factory_takes_its_channels_from_the_encoder():
    "One `n_in` rule for every factory: None takes the encoder's own channels (3 for an architecture name)"
    from self_supervised_fa.encoders.body import create_timm_body
    from self_supervised_fa.app.registry import _factory_kwargs
    import torch
    grey, x = create_timm_body('test_resnet', n_in=1), torch.zeros(2, 1, 32, 32)
    for name, m in METHODS.items():
        model = m.factory(grey, **{**_factory_kwargs(m.factory, x), **m.model_kwargs})
        assert model.encoder is grey, name
        assert m.factory('test_resnet', **{**_factory_kwargs(m.factory, x), **m.model_kwargs}).encoder.n_in == 3, name
