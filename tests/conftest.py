"Shared pytest setup: quiet third-party warnings, deterministic threads, one sample-data folder per session"
import os, warnings
import pytest, torch

warnings.filterwarnings('ignore', category=FutureWarning, module='torch')
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
# the same numbers on every machine: 'auto' would pick bf16 on some CPUs (AMD with AVX512-BF16, AMX) and float32 on others;
# the bf16 and fp16 paths are tested where a test asks for them by name
os.environ.setdefault('SSFA_PRECISION', 'fp32')


@pytest.fixture(scope='session', autouse=True)
def _sample_data():
    "Materialise the MNIST sample once (into $SSFA_DATA or the user cache) before any test reads it"
    from self_supervised_fa.data.sample import get_sample_data
    return get_sample_data()


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run the tests marked slow (minutes on a CPU)')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test, skipped unless pytest --runslow')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with pytest --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)


@pytest.fixture(scope='module')
def one_torch_thread():
    "Tiny models on a shared 2-core CPU: one torch thread is 10-100x faster than two fighting other jobs"
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

@pytest.fixture(scope='session')
def small_colour_competition(tmp_path_factory):
    "A small colour competition folder (9 classes x 12 train + 4 test crops); do not modify it: copy it first"
    from self_supervised_fa.data.photos import get_colour_competition
    return get_colour_competition(tmp_path_factory.mktemp('colour')/'comp', n_train=12, n_test=4)


@pytest.fixture(autouse=True)
def _no_autocast_left_on():
    "A test that leaves CPU autocast on (a fit that raised between `before_batch` and `after_loss`) fails on its own, and the next tests run without it"
    yield
    if torch.is_autocast_enabled('cpu'):
        torch.set_autocast_enabled('cpu', False)
        pytest.fail("CPU autocast was left on after this test: a fit raised before the callback that opened it could close it")
