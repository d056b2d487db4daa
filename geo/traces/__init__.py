"""GPS traces: GPX parsing, cleaning, ingest, reads, edits and perimeter-walk boundaries."""
