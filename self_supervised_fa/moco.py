"""The documented import path of `siamese.moco`: `from self_supervised_fa.moco import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.moco import *
from .siamese.moco import __all__  # noqa: F401 (the names `import *` gives)
