"""Recorded, labelled agent answers: the wide and long files and the decisions JSONL of
``trustorch run``, read into one ``RecordSet``."""

from eval.recorded.records import Record, RecordSet, read_records

__all__ = ["Record", "RecordSet", "read_records"]
