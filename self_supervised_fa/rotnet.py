"""The documented import path of `pretext.rotnet`: `from self_supervised_fa.rotnet import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.rotnet import *
from .pretext.rotnet import __all__  # noqa: F401 (the names `import *` gives)
