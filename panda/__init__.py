"""Panda Professor: a self-hostable tutoring platform."""

__version__ = "0.1.0"
