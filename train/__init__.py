"""Training: data, loops and the `python -m train` command."""
