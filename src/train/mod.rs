//! Training: optimisers, schedules, clipping, the training loop.
