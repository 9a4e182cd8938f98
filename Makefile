.PHONY: demo test lint bench
demo:
	bash tools/demo.sh
test:
	bash tools/test.sh
lint:
	.venv/bin/ruff check .
bench:
	.venv/bin/python benchmarks/pretrain_throughput.py
