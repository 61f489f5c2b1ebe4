"""The documented import path of `siamese.barlow_twins`: `from self_supervised_fa.barlow_twins import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.barlow_twins import *
from .siamese.barlow_twins import __all__  # noqa: F401 (the names `import *` gives)
