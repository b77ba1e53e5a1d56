"""``python -m cl_ml_tools.models`` prints the registry's tables for docs/models.md."""

from .registry import markdown_tables

print(markdown_tables(), end="")
