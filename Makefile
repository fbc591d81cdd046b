# The two README commands, and a few conveniences. The build itself is CMake.
#   make run    install what building and running need, build, run the agent on the
#               simulated kernel (the test toolchain comes with make test)
#   make test   install dependencies, build (plain, ASan+UBSan, TSan), run every suite (VM included)
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
LISTEN ?= 127.0.0.1:8421
PREFIX ?= /usr/local

.PHONY: all deps build run test test-vm test-fleet bench bench-fleet bench-live-update format clean \
	install

all: build

deps:
	scripts/install-deps

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j $(JOBS)

# The demo's staging directory (README, "The agent in five minutes"): kernels are staged only
# from allowed directories (--staging-dir). Run as root, the demo names the user its network
# process drops to (nobody, unless RUN_USER says; an installed agent has its own, luofleet).
RUN_USER ?= nobody
RUN_AS := $(if $(filter 0,$(shell id -u)),--user=$(RUN_USER))
run: build
	mkdir -p $(CURDIR)/run-staging
	exec build/bin/luofleet-agent --backend=sim --state-dir=$(CURDIR)/run-state --listen=$(LISTEN) \
		--staging-dir=$(CURDIR)/run-staging $(RUN_AS)

test:
	scripts/test

test-vm: build
	scripts/install-deps --with-vm
	cd build && ctest --output-on-failure -L vm

test-fleet: build
	scripts/install-deps --with-tests
	cd build && ctest --output-on-failure -L fleet

bench: build
	scripts/install-deps --with-tests
	bench/run

# 100 and 1,000 real agents in one rollout (docs/benchmarks.md, "Fleet rollout").
bench-fleet: build
	scripts/install-deps --with-tests
	bench/fleet-rollout 100 1000

# The blackout a workload sees through the agent beside the raw kernel figure, on a real
# Linux 7.3 under QEMU, 64 MiB and 1 GiB (docs/benchmarks.md, "Live update").
bench-live-update: build
	scripts/install-deps --with-vm
	bench/live-update 64 1024

# Into PREFIX (default /usr/local; DESTDIR stages it): docs/install.md. Builds first.
install: build
	cmake --install build --prefix $(PREFIX)

format:
	scripts/check-source --fix

clean:
	rm -rf build build-asan build-tsan
