# Natter: run, test, and the targets CI uses.
CARGO ?= cargo
DATA_DIR ?= natter-data

.PHONY: run build test test-unit test-cql test-nats fmt lint clean help bench

help:
	@echo "make run    - build (release) and run the single-node server in ./$(DATA_DIR)"
	@echo "make test   - every test: unit, store conformance, end-to-end over real WebSockets"
	@echo "make test-cql - the CQL store against Apache Cassandra 5.0 (installed and started by deploy/cassandra.sh)"
	@echo "make test-nats - the NATS bus against a real nats-server (installed and started by deploy/nats.sh)"
	@echo "make test-distributed - the end-to-end suite against a distributed deployment (two gateways, NATS, Cassandra)"
	@echo "make lint   - rustfmt check and clippy"
	@echo "make bench  - the standard benchmark suite (a few minutes); writes bench/results/<date>.md"
	@echo "make cluster - a local distributed deployment: NATS, Cassandra, 2 gateways, one of every other role"
	@echo "make cluster-down - stop it"

run:
	$(CARGO) run --release --locked --bin natter -- --data-dir $(DATA_DIR) serve

build:
	$(CARGO) build --release --locked --bin natter

test: test-cql test-nats test-distributed test-k8s
	$(CARGO) test --workspace --locked
	@# The benchmark's smoke run is crates/bench/tests/smoke.rs, part of the line above.

# The CQL store (conformance suite + CQL-specific tests) against a real Apache
# Cassandra 5.0. Fails, never skips, when the database cannot be had. Stops
# Cassandra again afterwards if this target started it.
test-cql:
	deploy/cassandra.sh install
	@started=0; deploy/cassandra.sh status >/dev/null 2>&1 || started=1; \
	deploy/cassandra.sh start || exit 1; \
	NATTER_REQUIRE_CQL=1 $(CARGO) test --locked -p natter-store --features cql --test cql; rc=$$?; \
	if [ $$started = 1 ]; then deploy/cassandra.sh stop; fi; \
	exit $$rc

# The NATS bus (the bus conformance suite) against a real nats-server.
# Fails, never skips, when the server cannot be had; stops it again if this
# target started it.
test-nats:
	deploy/nats.sh install
	@started=0; deploy/nats.sh status >/dev/null 2>&1 || started=1; \
	deploy/nats.sh start || exit 1; \
	$(CARGO) test --locked -p natter-bus --features nats --test nats; rc=$$?; \
	if [ $$started = 1 ]; then deploy/nats.sh stop; fi; \
	exit $$rc

# The end-to-end scenarios against the distributed mode: one natter process per
# role (two gateways) on a real nats-server and Cassandra 5.0, plus the crash
# tests (kill -9 of a gateway and of the message role, a NATS restart). Fails,
# never skips; stops NATS/Cassandra again if this target started them.
.PHONY: test-distributed
test-distributed:
	deploy/nats.sh install
	deploy/cassandra.sh install
	@nats=0; cql=0; \
	deploy/nats.sh status >/dev/null 2>&1 || nats=1; \
	deploy/cassandra.sh status >/dev/null 2>&1 || cql=1; \
	{ deploy/nats.sh start && deploy/cassandra.sh start && \
	  $(CARGO) build --locked -p natter-server --features distributed --bin natter && \
	  NATTER_REQUIRE_DISTRIBUTED=1 $(CARGO) test --locked -p natter-e2e --features distributed --test distributed; }; rc=$$?; \
	if [ $$nats = 1 ]; then deploy/nats.sh stop; fi; \
	if [ $$cql = 1 ]; then deploy/cassandra.sh stop; fi; \
	exit $$rc

# The Kubernetes manifests (k8s/), deploy/Dockerfile and deploy/compose.yaml:
# schema validation against Kubernetes 1.30 plus cross-reference checks, no
# cluster or Docker needed. Installs its tools once into $NATTER_INFRA_DIR/k8s-venv.
.PHONY: test-k8s
test-k8s:
	deploy/test-k8s.sh

# The standard suite against a natter it starts itself (see docs/PERFORMANCE.md).
# BENCH_ARGS adds flags, e.g. BENCH_ARGS="--idle-conns 500000" or "--only fanout".
bench:
	$(CARGO) build --release --locked -p natter-server -p natter-bench
	./target/release/natter-bench suite --out bench/results $(BENCH_ARGS)

# A local distributed deployment (see deploy/cluster.sh and docs/ARCHITECTURE.md).
.PHONY: cluster cluster-down
cluster:
	deploy/cluster.sh up

cluster-down:
	deploy/cluster.sh down

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
