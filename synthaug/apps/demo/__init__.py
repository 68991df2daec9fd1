"""``synthaug demo``: every stage on the embedded phantom, on a CPU, with one report."""

from synthaug.apps.demo.run import DemoPlan, run_demo

__all__ = ["DemoPlan", "run_demo"]
