# jasper-host: build and test entry points. `make help` lists them.
#
# One profile (release) for the host and every native test; the plugins use the
# `plugin` profile for wasm32-wasip2. Everything lands in ./target.

CARGO ?= cargo
PLUGINS := orders audit noop misbehave versioned probe webhook
PLUGIN_DIR := target/wasm32-wasip2/plugin

.PHONY: help plugins build browser amqp10 test lint quickstart bench

help:
	@echo "make plugins     build the example and test plugins (wasm32-wasip2) into $(PLUGIN_DIR)/"
	@echo "make build       build the host: target/release/jasper-host"
	@echo "make browser     install Debian's chromium and chromium-driver (the dead-letter page test) if missing"
	@echo "make amqp10      install python3-qpid-proton (the AMQP 1.0 client and Service Bus double) if missing; enable rabbitmq_amqp1_0"
	@echo "make test        plugins + build + browser + amqp10 + every test (unit and end-to-end)"
	@echo "make lint        cargo fmt --check and clippy (-D warnings) over every crate and target"
	@echo "make quickstart  run a host on examples/jasper.toml and send it demo orders"
	@echo "make bench       run the benchmarks (jasper-bench, jasper-cluster-bench, jasper-tcp-bench, jasper-rabbit-bench)"

plugins:
	rustup target add wasm32-wasip2
	$(CARGO) build --profile plugin --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))

# The whole default workspace, not `-p jasper-host`: the same feature set as
# `cargo test --release`, so the heavy crates (wasmtime, sqlx) build once.
build:
	$(CARGO) build --release

# Headless Chromium and its WebDriver for tests/suites/dead_letter_page.rs.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium and chromedriver are installed"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# The AMQP 1.0 suites: Debian's qpid-proton for /usr/bin/python3 (the plain
# client and the Service Bus double in tests/asb/) and RabbitMQ's AMQP 1.0
# plugin (same port 5672; enabling it again is a no-op).
amqp10:
	@if /usr/bin/python3 -c 'import proton' 2>/dev/null; then echo "python3-qpid-proton is installed"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-qpid-proton; fi
	rabbitmq-plugins enable rabbitmq_amqp1_0

test: plugins build browser amqp10
	$(CARGO) test --release --no-fail-fast
	$(CARGO) test --release -p orders -p audit -p misbehave -p versioned -p webhook -p probe

# The release profile for clippy too: its build scripts and proc macros are the
# ones `make build` compiles, so lint and test share them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

quickstart: plugins build
	mkdir -p plugins
	cp $(PLUGIN_DIR)/orders.wasm $(PLUGIN_DIR)/audit.wasm plugins/
	bash scripts/quickstart.sh

bench: plugins build
	./target/release/jasper-bench --noop $(PLUGIN_DIR)/noop.wasm --backends sqlite,postgres,mysql
	./target/release/jasper-cluster-bench --noop $(PLUGIN_DIR)/noop.wasm
	./target/release/jasper-tcp-bench --noop $(PLUGIN_DIR)/noop.wasm
	./target/release/jasper-rabbit-bench --noop $(PLUGIN_DIR)/noop.wasm
