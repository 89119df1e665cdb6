"""Task heads, losses, metrics, transforms and data for fine-tuning the four Sapiens tasks."""
