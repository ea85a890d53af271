"""Kafka consumption: the ingest loop, dead letters, offsets."""
