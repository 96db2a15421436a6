"""Reports read stored results only: per-run report and plots, and the cross-run leaderboard."""
