"""``python -m train --preset demo [--key value ...]``: see :mod:`train.run`."""

import sys

from train.run import main

sys.exit(main())
