"""Orchestration: scheduler, triggers, lifecycle, health and metrics HTTP."""
