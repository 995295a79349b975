"""The primary + streaming standby for the replica-lag tests: tools/pgcluster.py (bench uses
it too, and bench imports nothing from tests/)."""

from tools.pgcluster import STANDBY_NAME, Cluster, bin_dir, free_port

__all__ = ["STANDBY_NAME", "Cluster", "bin_dir", "free_port"]
