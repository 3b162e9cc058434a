"""ex2 annotate: ground descriptions in images with an open-vocabulary detector, the regions GRAIN-style fine-tuning reads (stage)."""
