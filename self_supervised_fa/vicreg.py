"""The documented import path of `siamese.vicreg`: `from self_supervised_fa.vicreg import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/siamese/ (tests/test_layout.py checks this file)
from .siamese.vicreg import *
from .siamese.vicreg import __all__  # noqa: F401 (the names `import *` gives)
