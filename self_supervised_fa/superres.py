"""The documented import path of `pretext.superres`: `from self_supervised_fa.superres import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.superres import *
from .pretext.superres import __all__  # noqa: F401 (the names `import *` gives)
