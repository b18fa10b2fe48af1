"""Stage two: score heads (DAE and baselines), losses, the batched trainer and metrics. Arrays in, arrays out."""
