"""`python -m benchmarks`: see benchmarks/run.py for the options."""
from .run import main

raise SystemExit(main())
