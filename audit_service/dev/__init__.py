"""The local stack behind `make run` and the tests: embedded PostgreSQL, the Tansu broker,
sample events. May import anything; nothing in the service imports it but the CLI.
"""
