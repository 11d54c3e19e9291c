"""`make bench`'s data-tracker case (issue 19): one person's report over a year at 2 and 20 million records; the
measurement lives beside the transaction log's own (bench/txlog_bench.py)."""

from bench.txlog_bench import run_tracker as run

__all__ = ["run"]
