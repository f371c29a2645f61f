"""`python -m builder`: the build-image command line, as `python -m builder.cli`."""

import sys

from builder.cli import main

sys.exit(main())
