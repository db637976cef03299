"""`python -m auxilio`."""

import sys

from auxilio.cli import main

sys.exit(main())
