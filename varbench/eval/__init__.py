"""Measurement: analytic FLOPs per component, the speed/memory protocol, quality metrics."""
