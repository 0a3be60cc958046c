"""The one rich console every action prints through (tables stay readable when output is piped)."""

import sys

from rich.console import Console

# Piped output (CI logs, `| tee`) has no terminal width; 80 columns would squeeze the tables.
console = Console(width=None if sys.stdout.isatty() else 140)
