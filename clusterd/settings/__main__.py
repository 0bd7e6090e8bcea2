"""`python -m clusterd.settings` prints docs/options.md."""

from .docs import options_markdown

print(options_markdown(), end="")
