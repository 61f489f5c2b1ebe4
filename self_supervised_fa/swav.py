"""The documented import path of `siamese.swav`: `from self_supervised_fa.swav import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.swav import *
from .siamese.swav import __all__  # noqa: F401 (the names `import *` gives)
