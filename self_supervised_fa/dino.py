"""The documented import path of `siamese.dino`: `from self_supervised_fa.dino import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.dino import *
from .siamese.dino import __all__  # noqa: F401 (the names `import *` gives)
