"""Fault injection: killed workers and servers, a flaky provider, an unavailable database."""
