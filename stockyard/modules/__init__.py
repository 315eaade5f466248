"""Modules of the request chain (``pipeline.Chain``): one small class per file, each with a
``name`` and two hooks, ``before(ctx)`` and ``after(ctx)``. DESIGN.md gives their order:
rate limit, budget, cache, route/alias, fallback/retry."""
