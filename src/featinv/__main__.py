"""``python -m featinv …`` (and so ``torchrun … -m featinv train …``): the command line."""

import sys

from .cli import main

sys.exit(main())
