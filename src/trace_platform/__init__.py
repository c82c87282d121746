"""Trace: ETL orchestration kernel for blockchain research and operations."""

__version__ = "0.1.0"
