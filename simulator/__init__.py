"""The composition root: replays user streams through device sessions and the cloud, writes reports."""
