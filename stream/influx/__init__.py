"""Writing line protocol to InfluxDB without losing it: ``config`` (the sink's schema),
``client`` (the v1 and v2 write paths), ``writer`` (batches, retries with backoff, the disk spool
while the database is down, bisecting refused batches), ``spool``, ``deadletter`` and ``numfmt``
(numba float/int formatting and line rendering for ``stream.lineprotocol``). Import the modules
themselves: this package imports nothing, so ``stream.lineprotocol`` can use ``numfmt`` without
pulling in the sink."""
