"""Kafka: the only package that imports kafka-python (the daemon's consumer, and group-less
clients for status, check-config and the dev stack). May import `core`, `config`, `errors`.
"""
