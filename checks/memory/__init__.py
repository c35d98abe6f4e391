"""The memory engine: trace one real training step on fake tensors and account every byte at the peak."""
