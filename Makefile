# Natter: run, test, and the targets CI uses.
CARGO ?= cargo
DATA_DIR ?= natter-data

.PHONY: run build test test-unit fmt lint clean help

help:
	@echo "make run    - build (release) and run the single-node server in ./$(DATA_DIR)"
	@echo "make test   - every test: unit, store conformance, end-to-end over real WebSockets"
	@echo "make lint   - rustfmt check and clippy"

run:
	$(CARGO) run --release --locked --bin natter -- --data-dir $(DATA_DIR) serve

build:
	$(CARGO) build --release --locked --bin natter

test:
	$(CARGO) test --workspace --locked

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
