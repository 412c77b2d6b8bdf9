"""One small module per queue, plus the shared batching machinery that settles deliveries."""
