"""The composition root: the Starlette app, validation, auth, problem+json errors, the server's
lifecycle and the ``wallet`` command line."""

from server._app import Api, build_app
from server._errors import REASONS, ApiError
from server._serve import ServeOptions, serve

__all__ = ["REASONS", "Api", "ApiError", "ServeOptions", "build_app", "serve"]
