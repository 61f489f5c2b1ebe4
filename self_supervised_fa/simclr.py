"""The documented import path of `siamese.simclr`: `from self_supervised_fa.simclr import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.simclr import *
from .siamese.simclr import __all__  # noqa: F401 (the names `import *` gives)
