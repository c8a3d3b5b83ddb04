# Warren build, test and code generation. Every target installs what it needs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

STATICCHECK_VERSION := v0.8.2
PROTOC_GEN_GO := $(BIN)/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOC_GEN_GO_GRPC := $(BIN)/protoc-gen-go-grpc
BINARIES := warren-ztunnel warren-controller warren-cni warren-waypoint kubectl-warren

.PHONY: all build images demo demo-inprocess envtest-bins lab-bins test test-unit lint generate generate-check deps tools bench bench-micro clean

all: build

## deps: OS packages the build, the generators and the tests need (Debian; run as root).
deps:
	@need=""; \
	command -v protoc >/dev/null || need="$$need protobuf-compiler"; \
	command -v ip >/dev/null || need="$$need iproute2"; \
	command -v nsenter >/dev/null || need="$$need util-linux"; \
	command -v kubectl >/dev/null || need="$$need kubectl"; \
	command -v stunnel4 >/dev/null || need="$$need stunnel4"; \
	command -v haproxy >/dev/null || need="$$need haproxy"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	fi

## tools: module-built tools at the versions go.mod pins.
tools: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
	test/tools/build.sh controller-gen
$(PROTOC_GEN_GO): go.mod
	$(GO) build -o $@ google.golang.org/protobuf/cmd/protoc-gen-go
$(PROTOC_GEN_GO_GRPC):
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

## images: Warren's container images without Docker: bin/images/oci (one OCI layout holding
## $(IMAGE_REGISTRY)/warren-{controller,ztunnel,waypoint}:$(VERSION), what the lab pulls from) and
## bin/images/<name>-$(VERSION).tar (docker save format, for docker load / kind load image-archive).
## GOARCHES=amd64,arm64 builds both; SOURCE_DATE_EPOCH sets the creation time (default 1970).
VERSION ?= 0.1.0
IMAGE_REGISTRY ?= ghcr.io/warren-mesh
GOARCHES ?= $(shell $(GO) env GOARCH)
images:
	GO=$(GO) $(GO) run ./test/images --out $(BIN)/images --tag $(VERSION) --registry $(IMAGE_REGISTRY) --goarch $(GOARCHES)

## demo: the main job (root): the lab as a two-node cluster (etcd, kube-apiserver,
## kube-controller-manager, kube-scheduler, a lab kubelet and service proxy per node); Warren's
## images built (make images) and Warren installed from manifests/charts/warren with kubectl; the
## article's L4 policy (allowed and denied traffic, the security event, a capture of the
## inter-node link) and its L7 example through a waypoint; uninstall, checked clean; teardown.
## The first run builds the control plane and helm (~20 min on two cores); later runs ~2 min.
demo: deps envtest-bins lab-bins
	$(GO) run ./test/lab demo

## demo-inprocess: the same policy with two in-process ztunnels on loopback (no root, no eBPF).
demo-inprocess:
	$(GO) run ./test/demo

## envtest-bins: kube-apiserver and etcd for the control-plane tier, and kube-controller-manager,
## kube-scheduler and helm for the lab cluster, built from test/tools into .cache/bin (a no-op when
## up to date; ~6 min on 2 cores the first time for the first two, ~15 min more for the rest).
envtest-bins:
	test/tools/build.sh kube-apiserver etcd kube-controller-manager kube-scheduler helm

## lab-bins: the reference CNI plugins (bridge, host-local, loopback) for the lab, built from
## containernetworking/plugins v1.10.0 into .cache/bin/cni.
lab-bins:
	test/tools/build.sh cni-plugins

## test: every tier, the way CI runs it.
test: deps generate-check lint envtest-bins lab-bins
	$(GO) test -race -count=1 ./...
	# Allocation tests are meaningless under -race (they skip there): run them once without it.
	$(GO) test -count=1 -run 'Allocs' ./...

test-unit:
	$(GO) test -count=1 ./...

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

## generate: all generated code, byte for byte: protobuf, deepcopy, CRDs, and the install
## manifests (manifests/install) rendered from the Helm chart manifests/charts/warren.
generate: deps tools
	protoc --proto_path=api/nodeconfig \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=api/nodeconfig --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=api/nodeconfig --go-grpc_opt=paths=source_relative \
		api/nodeconfig/nodeconfig.proto api/nodeconfig/push.proto
	protoc --proto_path=api/caservice \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=api/caservice --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=api/caservice --go-grpc_opt=paths=source_relative \
		api/caservice/ca.proto
	test/tools/generate-crds.sh
	test/tools/generate-manifests.sh

## generate-check: fail if the committed generated code differs from what generate makes.
generate-check: generate
	@if [ -n "$$(git status --porcelain -- api manifests)" ]; then \
		git status --porcelain -- api manifests; git diff --stat -- api manifests; \
		echo "generated code is stale: run 'make generate' and commit"; exit 1; fi

## bench: the data-path benchmark (root): direct vs Warren vs Warren with a waypoint vs stunnel4,
## HAProxy and a Go TLS tunnel on the lab's two-node path; prints the table and writes
## bench/results/latest.{md,json} (~14 min).
bench: deps envtest-bins lab-bins
	$(GO) run ./test/lab bench

## bench-micro: Go micro-benchmarks of the ztunnel packages, each next to a plain-TCP baseline.
bench-micro:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./ztunnel/ ./ztunnel/hbone ./ztunnel/pool ./ztunnel/relay ./ztunnel/authz

clean:
	rm -rf $(BIN)
