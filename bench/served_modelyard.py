"""modelyard's gateway as a module-level ASGI app, for servers without a factory option (socketify):
the same app `modelyard serve` builds (server/factory.py `app_from_env`, config from $MODELYARD_CONFIG)."""

from modelyard.server.factory import app_from_env

app = app_from_env()
