"""Monitoring: canary analysis now; drift reports and exporters build on it."""

from mlsd.monitoring.canary import ArmStats, CanaryParams, Verdict, analyze_canary

__all__ = ["ArmStats", "CanaryParams", "Verdict", "analyze_canary"]
