"""Round-latency benchmark app (see benchmarks/round.py)."""
