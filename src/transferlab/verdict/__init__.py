"""From predictions to the verdict: per-image scoring, metrics, paired statistics, aggregation, recommendation."""
