"""`python -m bench`: nurture's throughput, latency and footprint figures as one JSON document."""
