"""The documented import path of `pretext.context`: `from self_supervised_fa.context import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.context import *
from .pretext.context import __all__  # noqa: F401 (the names `import *` gives)
