"""A test app: trains nothing, sleeps on demand, fails on demand."""
