"""``python -m train.corpora``: see :mod:`train.corpora.cli`."""

import sys

from train.corpora.cli import main

sys.exit(main())
