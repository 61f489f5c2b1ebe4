"""The documented import path of `siamese.byol`: `from self_supervised_fa.byol import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.byol import *
from .siamese.byol import __all__  # noqa: F401 (the names `import *` gives)
