"""Latency model of the target machine (issue 16): what a pruned model's shape costs to run."""
