"""Writing line protocol to InfluxDB without losing it: batches, retries with backoff, a disk
spool while the database is down, and a dead-letter file for what the database refuses."""

from .client import PostResult, V1Client, V2Client, open_client
from .config import InfluxSinkConfig
from .deadletter import DeadLetter
from .spool import Spool, SpoolFullError
from .writer import Batch, BatchWriter, WriterStats

__all__ = ["Batch", "BatchWriter", "DeadLetter", "InfluxSinkConfig", "PostResult", "Spool",
           "SpoolFullError", "V1Client", "V2Client", "WriterStats", "open_client"]
