# Thin aliases for ./dev (which works even where make is not installed).
.PHONY: experiments test bench setup lint
experiments: ; ./dev experiments
test: ; ./dev test
bench: ; ./dev bench
setup: ; ./dev setup
lint: ; .venv/bin/ruff check byok experiments tests
