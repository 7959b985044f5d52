"""The write-ahead log: durable local segments (log.py) and the flusher that drains them."""
