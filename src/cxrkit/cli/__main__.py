"""``python -m cxrkit.cli``: the same as the ``cxrkit`` command."""

import sys

from cxrkit.cli.parser import main

sys.exit(main())
