"""The HTTP side of the gateway: the aiohttp app (API under /api/v1, dashboard, SSE, metrics, health).

Entry point: `gateway.api.app.create_app(ApiServices(...))`; the composition root is `gateway.service`.
"""
