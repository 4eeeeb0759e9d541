"""What a search keeps and hands on: the corpus, reports and their renderings, replay, export, upstream text."""
