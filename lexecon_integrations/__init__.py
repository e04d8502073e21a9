"""Adapters that put Lexecon between an agent framework and its tools.

Each framework lives in its own submodule and needs its extra (``pip install 'lexecon[langchain]'`` etc.); importing
this package imports no framework.
"""

__all__: list[str] = []
