"""ex2 inspect: label descriptions spurious, visual or non-visual with an attribute (stage), by an embedded classifier (categorize) or an LLM judge (judges), and summarise them (report)."""
