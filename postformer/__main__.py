"""``python -m postformer`` is the ``postformer`` command."""

import sys

from postformer.cli import main

sys.exit(main())
