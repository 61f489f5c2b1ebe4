"""The documented import path of `pretext.jigsaw`: `from self_supervised_fa.jigsaw import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.jigsaw import *
from .pretext.jigsaw import __all__  # noqa: F401 (the names `import *` gives)
