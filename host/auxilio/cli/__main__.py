"""`python -m auxilio.cli`."""

import sys

from auxilio.cli import main

sys.exit(main())
