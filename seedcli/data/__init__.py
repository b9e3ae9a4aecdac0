"""Data: the data-directory format, LLaVA-Instruct conversion, COCO, POPE/CHAIR builders, synthetic world."""
