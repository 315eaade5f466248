"""Stockyard: a self-hosted LLM proxy in one file."""

__version__ = "0.1.0"
