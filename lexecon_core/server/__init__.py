"""The hosted Lexecon server (FastAPI). Needs the ``server`` extra: ``pip install 'lexecon[server]'``.

``create_app()`` builds the ASGI application; ``lexecon server`` runs it under uvicorn.
"""

from lexecon_core.server._app import create_app, sync_policy

__all__ = ["create_app", "sync_policy"]
