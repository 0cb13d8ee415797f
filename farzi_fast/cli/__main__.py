"""`python -m farzi_fast.cli`: the `farzi-fast` command."""

import sys

from . import main

sys.exit(main())
