"""`python -m cells.check`: see cells/check/__init__.py."""
import sys

from .cli import main

sys.exit(main())
