"""Resilience primitives: a circuit breaker, a retry budget and a bulkhead.

Each is a small, synchronous-where-possible object with an injected clock. None of them
knows which dependency it guards (DynamoDB, Redis, ...): the client composes them. They are
meant for one asyncio event loop and are not thread-safe.
"""
