"""PostgreSQL: the models, the engine and driver-error translation, the write path's store,
the read-only reader and the migrations. May import `core`, `config` and `errors`.
"""
