"""Makazi's HTTP layer: the FastAPI app factory, routers and error mapping.

Handlers parse, authorise and call a function in ``geo``; nothing else.
"""
