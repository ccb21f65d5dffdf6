# Natter: run, test, and the targets CI uses.
CARGO ?= cargo
DATA_DIR ?= natter-data

.PHONY: run build test test-unit fmt lint clean help bench

help:
	@echo "make run    - build (release) and run the single-node server in ./$(DATA_DIR)"
	@echo "make test   - every test: unit, store conformance, end-to-end over real WebSockets"
	@echo "make lint   - rustfmt check and clippy"
	@echo "make bench  - the standard benchmark suite (a few minutes); writes bench/results/<date>.md"

run:
	$(CARGO) run --release --locked --bin natter -- --data-dir $(DATA_DIR) serve

build:
	$(CARGO) build --release --locked --bin natter

test:
	$(CARGO) test --workspace --locked
	@# The benchmark's smoke run is crates/bench/tests/smoke.rs, part of the line above.

# The standard suite against a natter it starts itself (see docs/PERFORMANCE.md).
# BENCH_ARGS adds flags, e.g. BENCH_ARGS="--idle-conns 500000" or "--only fanout".
bench:
	$(CARGO) build --release --locked -p natter-server -p natter-bench
	./target/release/natter-bench suite --out bench/results $(BENCH_ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
