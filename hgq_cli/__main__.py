"""``python -m hgq_cli``: the ``hgq`` command."""

import sys

from hgq_cli import main

sys.exit(main())
