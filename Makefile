# Natter: run, test, and the targets CI uses.
CARGO ?= cargo
DATA_DIR ?= natter-data

.PHONY: run build test test-cql test-nats fmt lint clean help bench

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

# One build of the whole workspace runs every suite: unit, store conformance
# on fjall and on Cassandra 5.0, the bus on a real nats-server, end-to-end
# over real WebSockets against a single node and against a distributed
# deployment (one process per role, two gateways), the crash tests.
# deploy/with-infra.sh installs and starts NATS and Cassandra first and stops
# them again afterwards if it started them.
#
# The suites that need NATS or Cassandra are opt-in features (INFRA_TESTS),
# so that a plain `cargo test` passes on a machine without them; asked for,
# they fail, never skip, when they cannot be had. NATTER_REQUIRE_* only make
# their failure messages say that CI asked for them.
INFRA_TESTS = natter-store/cql-tests,natter-bus/nats-tests,natter-bench/nats-tests,natter-e2e/distributed
REQUIRE_INFRA = NATTER_REQUIRE_CQL=1 NATTER_REQUIRE_DISTRIBUTED=1

test: test-k8s
	deploy/with-infra.sh -- env $(REQUIRE_INFRA) $(CARGO) test --workspace --locked --features $(INFRA_TESTS)
	@# The benchmark's smoke run is crates/bench/tests/smoke.rs, part of the line above.

# Parts of `make test`, for running one suite on its own.
# The CQL store (conformance suite + CQL-specific tests) against Apache Cassandra 5.0.
test-cql:
	deploy/with-infra.sh --cql -- env $(REQUIRE_INFRA) $(CARGO) test --locked -p natter-store --features cql-tests --test cql

# The NATS bus (the bus conformance suite) and the benchmark's NATS baseline
# against a real nats-server.
test-nats:
	deploy/with-infra.sh --nats -- $(CARGO) test --locked -p natter-bus -p natter-bench \
	  --features natter-bus/nats-tests,natter-bench/nats-tests --test nats

# The end-to-end scenarios against the distributed mode: one natter process per
# role (two gateways) on a real nats-server and Cassandra 5.0, plus the crash
# tests (kill -9 of a gateway and of the message role, a NATS restart).
.PHONY: test-distributed
test-distributed:
	deploy/with-infra.sh -- sh -c '$(CARGO) build --locked -p natter-server --features distributed --bin natter && \
	  $(REQUIRE_INFRA) $(CARGO) test --locked -p natter-e2e --features distributed --test distributed'

# The Kubernetes manifests (k8s/), deploy/Dockerfile and deploy/compose.yaml:
# schema validation against Kubernetes 1.30 plus cross-reference checks, no
# cluster or Docker needed. Installs its tools once into $NATTER_INFRA_DIR/k8s-venv.
.PHONY: test-k8s
test-k8s:
	deploy/test-k8s.sh

# The standard suite against a natter it starts itself (see docs/PERFORMANCE.md#how-to-run).
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
	$(CARGO) clippy --workspace --all-targets --locked --features $(INFRA_TESTS) -- -D warnings

clean:
	$(CARGO) clean
