"""The documented import path of `pretext.colorize`: `from self_supervised_fa.colorize import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.colorize import *
from .pretext.colorize import __all__  # noqa: F401 (the names `import *` gives)
