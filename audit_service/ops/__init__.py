"""Running under systemd and Prometheus: the health server, metrics, sd_notify and logging.
May import `core` and `errors`; never the database or the broker.
"""
