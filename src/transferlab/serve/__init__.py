"""Using the winner: networks rebuilt from checkpoints, the exports, the `transferlab` command."""
