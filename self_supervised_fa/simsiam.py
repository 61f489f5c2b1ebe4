"""The documented import path of `siamese.simsiam`: `from self_supervised_fa.simsiam import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.simsiam import *
from .siamese.simsiam import __all__  # noqa: F401 (the names `import *` gives)
