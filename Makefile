# Kinesis Butler. `make demo` shows records flowing; `make test` runs every test.
.PHONY: demo test build lint bench faults emulators stop-emulators clean

demo:
	scripts/demo.sh

test:
	scripts/test.sh

bench:
	scripts/bench.sh

faults:
	scripts/faults.sh

build:
	cargo build --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

emulators:
	scripts/emulators.sh start

stop-emulators:
	scripts/emulators.sh stop

clean:
	cargo clean
	rm -rf .demo .tools/run
