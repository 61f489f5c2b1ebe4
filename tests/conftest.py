"Shared pytest setup: quiet third-party warnings, deterministic threads, one sample-data folder per session"
import os, warnings
import pytest, torch

warnings.filterwarnings('ignore', category=FutureWarning, module='torch')
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope='session', autouse=True)
def _sample_data():
    "Materialise the MNIST sample once (into $SSFA_DATA or the user cache) before any test reads it"
    from self_supervised_fa.data import get_sample_data
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
