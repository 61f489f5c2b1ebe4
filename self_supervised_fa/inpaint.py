"""The documented import path of `pretext.inpaint`: `from self_supervised_fa.inpaint import *` gives everything it exports."""
# Written by hand, not exported from a notebook: the method itself lives in nbs/pretext/ (tests/test_layout.py checks this file)
from .pretext.inpaint import *
from .pretext.inpaint import __all__  # noqa: F401 (the names `import *` gives)
