"""The operator's surface: admin HTTP API, status page, Prometheus metrics (aiohttp).

- :mod:`gateway.admin.observe`: what is remembered between requests (security events, per-minute
  refusal and ban history, call counters); no aiohttp, kept by the gateway in any case.
- :mod:`gateway.admin.views`: JSON views of the running gateway, media sampling and rates.
- :mod:`gateway.admin.metrics`: the ``/metrics`` exposition.
- :mod:`gateway.admin.server`: the aiohttp application, access control, request log.
- :mod:`gateway.admin.openapi`: the API's OpenAPI description.

Importing this package does not import aiohttp; ``gateway.admin.server`` does.
"""
