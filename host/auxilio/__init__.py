"""Auxilio: host toolkit for panic-alert bracelets and street alert buttons."""

__version__ = "0.1.0"
