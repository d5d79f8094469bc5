"""The method: prunable units, gates, gate training, scales, export, model adapters and loading."""
