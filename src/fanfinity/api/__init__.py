"""The HTTP face: the app factory and its lifespan (the composition root), handlers, middleware,
problem+json mapping, OpenAPI helpers, access checks, rate limiting and the dashboard page."""
